"""pytest plugin loaded inside shard containers (``-p matrix_run_plugin``).

- Streams one JSON line per finished test phase to ``--matrix-run-report`` (flushed as it goes), so a shard
  killed by a timeout or the OOM killer still tells which tests finished and which did not.
- Records, per test, the JUnit ``classname``/``name`` pytest itself gives it, so JUnit testcases map back to
  exact node ids (needed to rerun failed tests, whatever characters their parameter ids hold).
- ``--matrix-run-select FILE`` (a JSON list of node ids) keeps only those tests; an id that no longer exists
  (e.g. a parameter id holding the current time) falls back to every parametrization of its function.
"""

import json
import os
import re

import pytest

_stream = None


def pytest_addoption(parser):
    group = parser.getgroup("matrix-run")
    group.addoption("--matrix-run-report", default=None, help="write per-test JSON lines here")
    group.addoption("--matrix-run-select", default=None, help="JSON file: node ids to run")


def _emit(record):
    if _stream is not None:
        _stream.write(json.dumps(record) + "\n")
        _stream.flush()


def _junit_names(nodeid):
    try:
        from _pytest.junitxml import mangle_test_address

        names = mangle_test_address(nodeid)
    except Exception:  # pytest internals moved: same rule, written out
        path, bracket, params = nodeid.partition("[")
        names = path.split("::")
        names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
        names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    global _stream
    path = config.getoption("matrix_run_report", None)
    if path and not hasattr(config, "workerinput"):
        _stream = open(path, "a", buffering=1)
        _emit({"event": "start", "pid": os.getpid()})


def pytest_unconfigure(config):
    global _stream
    if _stream is not None:
        _emit({"event": "end"})
        _stream.close()
        _stream = None


def _base(nodeid):
    return nodeid.split("[", 1)[0]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    path = config.getoption("matrix_run_select", None)
    if path:
        with open(path) as fh:
            wanted = set(json.load(fh))
        present = {item.nodeid for item in items}
        missing_bases = {_base(n) for n in wanted if n not in present}
        keep, drop = [], []
        for item in items:
            if item.nodeid in wanted or _base(item.nodeid) in missing_bases:
                keep.append(item)
            else:
                drop.append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
    _emit({"event": "collected", "nodeids": [item.nodeid for item in items]})


def pytest_collectreport(report):
    if report.failed:
        _emit({"event": "collecterror", "nodeid": report.nodeid, "longrepr": str(report.longrepr)[-4000:]})


def pytest_runtest_logreport(report):
    classname, name = _junit_names(report.nodeid)
    record = {
        "event": "test",
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": report.duration,
        "classname": classname,
        "name": name,
        "file": report.location[0] if report.location else None,
    }
    if hasattr(report, "wasxfail"):
        record["xfail"] = True
    if report.failed:
        record["longrepr"] = str(report.longrepr)[-4000:]
    _emit(record)
