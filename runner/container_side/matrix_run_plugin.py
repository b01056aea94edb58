"""pytest plugin loaded inside shard containers (``-p matrix_run_plugin``).

- Streams one JSON line per finished test phase to ``--matrix-run-report`` (flushed as it goes), so a shard
  killed by a timeout or the OOM killer still tells which tests finished and which did not.
- Records, per test, the JUnit ``classname``/``name`` pytest itself gives it, so JUnit testcases map back to
  exact node ids (needed to rerun failed tests, whatever characters their parameter ids hold).
- ``--matrix-run-files FILE`` (JSON ``{"include": [...]}`` or ``{"exclude": [...]}``, project-relative paths)
  restricts collection to a shard's files through ``pytest_ignore_collect``, so pytest still collects from the
  project's own roots with its own rules (``collect_ignore`` in conftest files, ``norecursedirs``, ...): a file
  that a conftest ignores stays ignored, exactly as in a direct run. The exclude form lets one shard take every
  file that no other shard named, so no test can fall between shards.
- Coverage, when matrix-run asks for it (``MATRIX_RUN_COVERAGE``: JSON with ``data_file``, ``source``, ``branch``):
  started as this plugin is loaded (``-p``, before any conftest or test module is imported), with the project's
  own coverage configuration, and saved to one data file per shard at the end of the session.
- ``--matrix-run-select FILE`` (JSON ``{"only": [...], "skip": [...], "fallback": bool}`` of node ids): a file
  with ids in ``only`` runs just those (a rerun, or a part of a file split across shards); ids in ``skip`` do not
  run (they belong to another part). In a rerun (``fallback``), an id that no longer exists (e.g. a parameter id
  holding the current time) falls back to every parametrization of its function.
"""

import json
import os
import re
import sys

import pytest

_stream = None


def _start_coverage():
    spec = os.environ.get("MATRIX_RUN_COVERAGE")
    if not spec or os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    try:
        import coverage

        opts = json.loads(spec)
        cov = coverage.Coverage(
            data_file=opts["data_file"],
            source=opts.get("source") or None,
            branch=True if opts.get("branch") else None,  # else the project's own setting
        )
        cov.set_option("run:parallel", False)  # one data file per shard, where matrix-run collects it
        cov.set_option("run:relative_files", False)  # /src paths, remapped onto the project by the coordinator
        cov.start()
    except Exception as exc:  # the tests still run; the shard just brings no coverage data back
        sys.stderr.write("matrix-run: coverage not started: %s: %s\n" % (exc.__class__.__name__, exc))
        return None
    return cov


_coverage = _start_coverage()


def pytest_addoption(parser):
    group = parser.getgroup("matrix-run")
    group.addoption("--matrix-run-report", default=None, help="write per-test JSON lines here")
    group.addoption("--matrix-run-select", default=None, help="JSON file: node ids to run or skip")
    group.addoption("--matrix-run-files", default=None, help="JSON file: the shard's files (include or exclude)")


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
    global _stream, _coverage
    if _coverage is not None:
        _coverage.stop()
        _coverage.save()
        _coverage = None
    if _stream is not None:
        _emit({"event": "end"})
        _stream.close()
        _stream = None


_selection = {}  # type: dict


def _shard_files(config):
    """(include set or None, exclude set or None, folders holding included files), read once."""
    if "files" not in _selection:
        path = config.getoption("matrix_run_files", None)
        include = exclude = None
        folders = set()
        if path:
            with open(path) as fh:
                spec = json.load(fh)
            if "include" in spec:
                include = set(spec["include"])
                for f in include:
                    parts = f.split("/")
                    folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            else:
                exclude = set(spec.get("exclude", []))
        _selection["files"] = (include, exclude, folders)
    return _selection["files"]


def pytest_ignore_collect(collection_path, config):
    include, exclude, folders = _shard_files(config)
    if include is None and not exclude:
        return None
    rel = os.path.relpath(str(collection_path), str(config.invocation_params.dir)).replace(os.sep, "/")
    if rel == "." or rel.startswith("../"):
        return None
    if os.path.isdir(str(collection_path)):
        if include is not None and rel not in folders:
            return True  # no file of this shard below: do not even look inside
        return None
    if include is not None:
        return None if rel in include else True
    return True if rel in exclude else None


def _base(nodeid):
    return nodeid.split("[", 1)[0]


def _file_of(nodeid):
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    path = config.getoption("matrix_run_select", None)
    order = [item.nodeid for item in items]  # pytest's own order, before any selection
    if path:
        with open(path) as fh:
            spec = json.load(fh)
        only, skip = set(spec.get("only", [])), set(spec.get("skip", []))
        present = {item.nodeid for item in items}
        # a rerun of an id that no longer exists (a parameter id holding the time, say) falls back to its whole
        # function; a part of a split file does not (the file's last part runs whatever no part names)
        missing_bases = {_base(n) for n in only if n not in present} if spec.get("fallback") else set()
        restricted = {_file_of(n) for n in only}
        keep, drop = [], []
        for item in items:
            nodeid = item.nodeid
            wanted = nodeid in only or _base(nodeid) in missing_bases or _file_of(nodeid) not in restricted
            if wanted and nodeid not in skip:
                keep.append(item)
            else:
                drop.append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep
    record = {"event": "collected", "nodeids": [item.nodeid for item in items]}
    if len(order) != len(items):
        record["order"] = order  # where tests were left to other shards: the whole files' order, for planning
    _emit(record)


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
