"""Each test attacks only when HOSTILE_MODE names it; otherwise it passes or is skipped."""

import json
import os
import time

import pytest

import hostile

MODE = os.environ.get("HOSTILE_MODE", "")


def only(mode):
    return pytest.mark.skipif(MODE != mode, reason="HOSTILE_MODE is not %r" % mode)


def test_before():
    assert hostile.add(1, 2) == 3


@only("exit0")
def test_exit_midway():
    os._exit(0)  # pytest never ends its session; the exit code says success


def test_after():
    assert hostile.add(2, 2) == 4


BAD_RECORDS = [
    b"[]",
    b"null",
    b'"text"',
    b'{"event": "test"}',
    b'{"event": "collected", "nodeids": 5}',
    b'{"event": "test", "nodeid": "tests/test_hostile.py::test_before", "when": "call", "outcome": "exploded"}',
    b'{"event": "test", "nodeid": "a\\u0000b", "when": "call", "outcome": "passed"}',
    b'{"event": "collecterror", "nodeid": ["x"]}',
    b"\xff\xfe not UTF-8 \xc3(",
    b'{"event": "test", "nodeid": ',
]


@only("badrecords")
def test_bad_records(request):
    """Malformed lines between the plugin's real records (the plugin flushes each record as it goes)."""
    with open(request.config.getoption("matrix_run_report"), "ab") as fh:
        fh.write(b"\n".join(BAD_RECORDS) + b"\n")


@only("covpaths")
def test_coverage_names_host_paths():
    """Coverage data naming files of the host: absolute, escaping /src with '..', and a project file that is a
    symlink to a host file on the host's side."""
    import coverage

    secret = os.environ["HOSTILE_SECRET_FILE"]
    up = "../" * 24
    lines = {
        "/etc/hostname": [1],
        "/etc/passwd": [1, 2],
        "/src/" + up + "etc/passwd": [1],
        "/src/tests/" + up + "etc/shadow": [1],
        secret: [1],
        "/src/" + up + secret.lstrip("/"): [1],
        "/src/leak.py": [1],
    }
    coverage.Coverage.current().get_data().add_lines(lines)


@only("secret")
def test_secret_is_printed_and_asserted():
    token = os.environ["MY_TOKEN"]
    print("raw:", token)
    print("repr:", repr(token))
    print("ascii:", ascii(token))
    print("json:", json.dumps(token))
    print("json-utf8:", json.dumps(token, ensure_ascii=False))
    assert token == "something else", "the token is %s" % token


def _status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return None


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        return "unreadable: %s" % exc.strerror


PIDS_MAX = "/sys/fs/cgroup/pids.max"  # cgroup v2
PIDS_MAX_V1 = "/sys/fs/cgroup/pids/pids.max"


def _mounts():
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4]
            if not point.startswith(("/proc", "/sys", "/dev")):
                points.append(point)
    return sorted(points)


@only("inspect")
def test_inspect(capsys):
    seen = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "capeff": _status("CapEff"),
        "capbnd": _status("CapBnd"),
        "nonewprivs": _status("NoNewPrivs"),
        "pids_max": _read(PIDS_MAX if os.path.exists(PIDS_MAX) else PIDS_MAX_V1),
        "mounts": _mounts(),
        "docker_socket": os.path.exists("/var/run/docker.sock") or os.path.exists("/run/docker.sock"),
        "host_secret_visible": os.path.exists(os.environ.get("HOSTILE_SECRET_FILE", "/nonexistent")),
    }
    with capsys.disabled():  # into the shard log, where the test reads it
        print("\nHOSTILE-INSPECT " + json.dumps(seen, sort_keys=True), flush=True)


@only("sleep")
def test_sleep():
    time.sleep(float(os.environ.get("HOSTILE_SLEEP", "60")))
