"""pytest plugin loaded inside shard containers (``-p matrix_run_plugin``): matrix-run's only addition to the
project's own pytest command line, besides the shard's test paths.

matrix-run adds no pytest option of pytest's own (no ``--junitxml``, no ``-o``): a project whose config turns
plugins off (``-p no:junitxml``, ``-p no:cacheprovider``) or is strict (``--strict-config``) runs as written.
Everything matrix-run reads comes from this plugin:

- One JSON line per event to ``--matrix-run-report`` (flushed as it goes), so a shard killed by a timeout or the
  OOM killer still tells which tests finished and which did not: ``start`` (pytest version, rootdir), ``collected``
  (node ids in pytest's order), ``test`` (one per phase, with outcome, duration, location, failure text, captured
  output of failures; a collected test is named by its index ``i`` in the collected ids, any other by its
  ``nodeid``, so a shard of 100,000 tests with long parameter ids writes tens of MB, not hundreds),
  ``collecterror`` / ``collectskip`` (a file that failed to import, or skipped whole at import), ``end``.
  matrix-run builds its JUnit from these records. Under pytest-xdist the controller writes the stream: workers'
  reports reach it through pytest's own hooks, and their collection through xdist's.
- ``--matrix-run-files FILE`` (JSON ``{"root": DIR, "include": [...]}`` or ``{"root": DIR, "exclude": [...]}``,
  paths relative to ``root``, the project) restricts the run to the shard's files: through
  ``pytest_ignore_collect`` for speed (a conftest's ``collect_ignore``, ``norecursedirs`` still apply as in a direct
  run), and again over the collected items, because pytest never asks ``pytest_ignore_collect`` about paths given
  on its command line. So each test runs in exactly one shard, whatever ``tests.paths`` names.
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
import sys
import time
import warnings

import pytest

TEXT_LIMIT = 8000  # characters of a failure's text kept per phase
OUTPUT_LIMIT = 8000  # characters of a failure's captured output kept per phase

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


_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps with options makes one a call


def _write(line):
    """One record line, written through at once (an unbuffered file: one write call, nothing held back)."""
    if _stream is not None:
        _stream.write(line.encode("utf-8", "backslashreplace"))


def _emit(record):
    if _stream is not None:
        _write(_encode(record) + "\n")


# The record of a phase that passed, in a suite of many small tests the plugin's main cost: written by hand (an int,
# two of pytest's own words, two finite numbers), the same JSON that _encode would make of it.
_PASSED = '{"event":"test","i":%d,"when":"%s","outcome":"passed","duration":%.6g,"stop":%.4f%s}\n'
_locations = {}  # type: dict  # (file, line) -> ',"file":...,"line":...' as JSON, made once per test function


_index = {}  # type: dict  # collected node id -> its index in the collected record, which test records use


def _emit_collected(record):
    _index.clear()
    _index.update((nodeid, i) for i, nodeid in enumerate(record["nodeids"]))
    _emit(record)


def _is_worker(config):
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    global _stream
    path = config.getoption("matrix_run_report", None)
    if path and not _is_worker(config):
        _stream = open(path, "ab", buffering=0)
        root = _shard_files(config)[3]
        rootdir = str(config.rootpath) if hasattr(config, "rootpath") else str(config.rootdir)
        rel = os.path.relpath(rootdir, root).replace(os.sep, "/") if root else "."
        _emit(
            {
                "event": "start",
                "pid": os.getpid(),
                "time": time.time(),
                "pytest": pytest.__version__,
                "rootdir": "" if rel == "." else rel,
                "xdist": bool(config.pluginmanager.hasplugin("xdist") and getattr(config.option, "numprocesses", 0)),
            }
        )


def pytest_unconfigure(config):
    global _stream, _coverage
    if _coverage is not None:
        try:  # a coverage problem (a project's filterwarnings = error, say) never fails the shard
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _coverage.stop()
                _coverage.save()
        except Exception as exc:
            sys.stderr.write("matrix-run: coverage not saved: %s: %s\n" % (exc.__class__.__name__, exc))
        _coverage = None
    if _stream is not None:
        _emit({"event": "end", "time": time.time()})
        _stream.close()
        _stream = None


_selection = {}  # type: dict


def _shard_files(config):
    """(include set or None, exclude set or None, folders holding included files, project root), read once."""
    if "files" not in _selection:
        path = config.getoption("matrix_run_files", None)
        include = exclude = None
        folders = set()
        root = ""
        if path:
            with open(path) as fh:
                spec = json.load(fh)
            root = spec.get("root") or ""
            if "include" in spec:
                include = set(spec["include"])
                for f in include:
                    parts = f.split("/")
                    folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
            else:
                exclude = set(spec.get("exclude", []))
        _selection["files"] = (include, exclude, folders, root)
    return _selection["files"]


def _project_path(config, path):
    """``path`` relative to the project root, posix; None when it lies outside the project."""
    root = _shard_files(config)[3] or str(config.invocation_params.dir)
    rel = os.path.relpath(str(path), root).replace(os.sep, "/")
    if rel == ".." or rel.startswith("../"):
        return None
    return rel


def _file_wanted(config, rel):
    include, exclude, _, _ = _shard_files(config)
    if rel is None:
        return True
    if include is not None:
        return rel in include
    return not exclude or rel not in exclude


def pytest_ignore_collect(collection_path, config):
    include, exclude, folders, _ = _shard_files(config)
    if include is None and not exclude:
        return None
    rel = _project_path(config, collection_path)
    if rel is None or rel == ".":
        return None
    if os.path.isdir(str(collection_path)):
        if include is not None and rel not in folders:
            return True  # no file of this shard below: do not even look inside
        return None
    return None if _file_wanted(config, rel) else True


def _base(nodeid):
    return nodeid.split("[", 1)[0]


def _file_of(nodeid):
    return nodeid.split("::", 1)[0]


def _item_file(config, item):
    path = getattr(item, "path", None) or getattr(item, "fspath", None)
    return _project_path(config, path) if path is not None else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    path = config.getoption("matrix_run_select", None)
    include, exclude, _, _ = _shard_files(config)
    keep, drop = [], []
    if include is not None or exclude:
        # paths named on pytest's command line are collected whatever pytest_ignore_collect says: filter again
        for item in items:
            (keep if _file_wanted(config, _item_file(config, item)) else drop).append(item)
        items[:] = keep
    order = [item.nodeid for item in items]  # pytest's own order of the shard's files, before any selection
    if path:
        with open(path) as fh:
            spec = json.load(fh)
        only, skip = set(spec.get("only", [])), set(spec.get("skip", []))
        present = {item.nodeid for item in items}
        # a rerun of an id that no longer exists (a parameter id holding the time, say) falls back to its whole
        # function; a part of a split file does not (the file's last part runs whatever no part names)
        missing_bases = {_base(n) for n in only if n not in present} if spec.get("fallback") else set()
        restricted = {_file_of(n) for n in only}
        keep = []
        for item in items:
            nodeid = item.nodeid
            wanted = nodeid in only or _base(nodeid) in missing_bases or _file_of(nodeid) not in restricted
            if wanted and nodeid not in skip:
                keep.append(item)
            else:
                drop.append(item)
        items[:] = keep
    if drop:
        config.hook.pytest_deselected(items=drop)
    if _is_worker(config):
        return  # under xdist the controller reports the collection (pytest_xdist_node_collection_finished)
    record = {"event": "collected", "time": time.time(), "nodeids": [item.nodeid for item in items]}
    if len(order) != len(items):
        record["order"] = order  # where tests were left to other shards: the whole files' order, for planning
    _emit_collected(record)


_xdist_collected = []


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    if not _xdist_collected:  # every worker collects the same ids
        _xdist_collected.append(True)
        _emit_collected({"event": "collected", "time": time.time(), "nodeids": list(ids)})


def _text(longrepr):
    text = str(longrepr) if longrepr is not None else ""
    return text[-TEXT_LIMIT:]


def _message(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        reason = str(longrepr[2])
        return (reason[9:] if reason.startswith("Skipped: ") else reason)[:500]
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)[:500]
    first = _text(longrepr).strip().splitlines()
    return first[-1][:500] if first else ""


def pytest_collectreport(report):
    if report.failed:
        _emit({"event": "collecterror", "nodeid": report.nodeid, "longrepr": _text(report.longrepr)})
    elif report.skipped:
        _emit({"event": "collectskip", "nodeid": report.nodeid, "message": _message(report)})


def _where(report):
    """(file, 1-based line) of the test, as pytest located it."""
    location = report.location or (None, None, None)
    return location[0], location[1] + 1 if isinstance(location[1], int) else None


def _location(report):
    """``,"file":...,"line":...`` of the test, made once per place."""
    key = _where(report)
    text = _locations.get(key)
    if text is None:
        text = _locations[key] = "," + _encode({"file": key[0], "line": key[1]})[1:-1]
    return text


def pytest_runtest_logreport(report):
    index = _index.get(report.nodeid)
    duration, stop = report.duration or 0.0, getattr(report, "stop", None) or time.time()
    plain = index is not None and report.passed and not hasattr(report, "wasxfail")
    if plain and report.when in ("setup", "call", "teardown") and 0 <= duration < 1e12 and 0 <= stop < 1e12:
        where = _location(report) if report.when == "setup" else ""
        _write(_PASSED % (index, report.when, duration, stop, where))
        return
    record = {"event": "test"}
    if index is None:
        record["nodeid"] = report.nodeid
    else:
        record["i"] = index
    record["when"] = report.when
    record["outcome"] = report.outcome
    record["duration"] = round(duration, 6)
    record["stop"] = round(stop, 4)
    if report.when == "setup" or report.failed:  # where the test is: once, and again with a failure
        record["file"], record["line"] = _where(report)
    if hasattr(report, "wasxfail"):
        record["xfail"] = True
        record["message"] = ("xfail: " + str(report.wasxfail))[:500] if report.wasxfail else "xfail"
    if report.failed:
        record["longrepr"] = _text(report.longrepr)
        record["message"] = _message(report)
        output = "\n".join("----- %s -----\n%s" % (title, body) for title, body in report.sections)
        if output:
            record["output"] = output[-OUTPUT_LIMIT:]
    elif report.skipped and "message" not in record:
        record["message"] = _message(report)
    _emit(record)
