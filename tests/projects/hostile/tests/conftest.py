"""Attacks on matrix-run's outputs, made after pytest and matrix-run's plugin have written them (at exit)."""

import atexit
import os

MODE = os.environ.get("HOSTILE_MODE", "")


def _symlink(out):
    # the container cannot see the host's file; the danger is the host following the link
    secret = os.environ["HOSTILE_SECRET_FILE"]
    for name in ("report.jsonl", ".coverage"):
        path = os.path.join(out, name)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(secret, path)


def _fifo(out):
    path = os.path.join(out, "report.jsonl")
    os.unlink(path)
    os.mkfifo(path)


def _bigreport(out):
    with open(os.path.join(out, "report.jsonl"), "ab") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB of size, no disk


AT_EXIT = {"symlink": _symlink, "fifo": _fifo, "bigreport": _bigreport}


def pytest_configure(config):
    report = config.getoption("matrix_run_report", None)  # matrix-run's plugin option; None without it
    if report and MODE in AT_EXIT:
        # atexit runs after pytest returned: the plugin has closed its report and coverage has saved its data
        atexit.register(AT_EXIT[MODE], os.path.dirname(report))


def pytest_runtestloop(session):
    if MODE == "norun":  # collect, run nothing, end the session as if all went well: exit 0
        return True
    return None
