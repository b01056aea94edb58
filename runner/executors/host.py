"""The host executor: one shard attempt on the node itself, without a container -> ShardOutcome.

For matrix rows that no Linux container can serve (a macOS or Windows node of a lab, a GPU box without
container GPU support). Per node, and reused while their content hashes hold:

- an environment per cell environment: a virtual environment made from the node's own interpreter for the
  cell (``python3.X`` on PATH, or ``image.python``), with the cell's install lines, pip arguments, CA bundle and
  wheelhouse: the same inputs, so the same hash, as the cell's image (``ImageSpec.digest``) plus the interpreter;
- a snapshot per (environment, source): the project unpacked, built and installed beside the environment (a
  regular install into a folder of its own, so snapshots never touch each other), and its bytecode made.

Each attempt runs in its own fresh copy of the snapshot's tree, in its own session and process group, with an
environment built from an allowlist (never the node's own variables), the same plugin, reports, timeout and
secret masking as a container shard. On every way out the process group is killed, and so is any process that
left the group but carries the attempt's token: nothing is left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from runner import images, outputs, source, workspace
from runner.execution import SETUP_FAILED, ShardOutcome, ShardRequest
from runner.executors import write_inputs
from runner.images import SIDE_DIR, SOURCE_RECIPE, ImageSpec
from runner.masking import mask_report, mask_secrets

HOST_RECIPE = "1"  # how host environments and snapshots are made
READY = ".matrix-run-ready"  # written last: an environment or snapshot without it is half made and is remade
SETUP_TIMEOUT = 3600.0  # seconds an environment's pip install may take
ENV_TOKEN = "MATRIX_RUN_ATTEMPT_TOKEN"  # every process of an attempt inherits it: how stragglers are found
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


class HostSetupFailed(Exception):
    """The cell's environment could not be made on this node: the cell's error, with the log's tail."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class HostExecutor:
    """``executor: host``: the attempt runs on the node's own interpreter, in a process group of its own."""

    name = "host"

    def run(self, request: ShardRequest, tarball: bytes, gpu_ids: tuple[str, ...] = ()) -> ShardOutcome:
        return run_shard(request, tarball, gpu_ids)

    def stop(self, request: ShardRequest) -> None:
        kill_attempt(request)


def find_interpreter(name: str) -> str | None:
    """``image.python`` or ``python3.X``: a name looked up on PATH, or a path; None when the node has none. The
    interpreter's own executable (``sys.executable``), so a launcher or shim (pyenv's) is not what runs later."""
    found = name if os.sep in name else shutil.which(name)
    if not found or not os.path.isfile(found) or not os.access(found, os.X_OK):
        return None
    real = _ask(found, "import sys; print(sys.executable)")
    return real if real and os.path.isfile(real) else None


def _ask(interpreter: str, code: str) -> str | None:
    """What ``code`` prints under ``interpreter`` (isolated mode, from the workspace's home); None when it fails."""
    try:
        proc = subprocess.run(
            [interpreter, "-I", "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=workspace.subdir("home"),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock of this node's state folder: one process makes an environment, the others wait for it."""
    fd = workspace.open_lock(name)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _run_group(argv: list[str], env: dict[str, str], cwd: str, out: IO[bytes], timeout: float) -> int | None:
    """Run ``argv`` in a session and process group of its own, output into ``out``; the exit code, or None when
    ``timeout`` struck. The whole group is killed on every way out: what the command left running goes too."""
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        _kill_group(proc.pid)
        proc.wait()


def _run_logged(argv: list[str], env: dict[str, str], log: Path, timeout: float, cwd: str) -> int:
    """A setup step, its output appended to ``log``; a timeout counts as a kill."""
    with open(log, "ab") as fh:
        fh.write(("+ " + " ".join(argv) + "\n").encode())
        fh.flush()
        code = _run_group(argv, env, cwd, fh, timeout)
        if code is None:
            fh.write(f"matrix-run: timed out after {timeout:g} s\n".encode())
            return -signal.SIGKILL
        return code


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(_log_tail(path, 64 * 1024).decode("utf-8", "replace").splitlines()[-lines:])


def _setup_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": BASE_PATH,
        "HOME": str(workspace.subdir("home")),
        "LANG": "C.UTF-8",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    return {**env, **(extra or {})}


def env_key(spec: ImageSpec, interpreter: str, inherit: tuple[str, ...] = ()) -> str:
    """The environment's content hash: the cell image's inputs, and which interpreter (its resolved path and its
    file's identity, so an upgraded interpreter makes a new environment), and the site folders it inherits."""
    real = os.path.realpath(interpreter)
    st = os.stat(real)
    key = f"{spec.digest}\n{real}\n{st.st_size}:{int(st.st_mtime)}\n{HOST_RECIPE}"
    if inherit:
        key += "\ninherit:" + "\n".join(inherit)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def site_folders(interpreter: str) -> tuple[str, ...]:
    """The interpreter's own site-packages folders (a virtual environment's or conda's own, not its base's): what
    an environment that inherits its packages sees after its own."""
    printed = _ask(interpreter, "import json, site; print(json.dumps(site.getsitepackages()))")
    try:
        found = json.loads(printed.splitlines()[-1]) if printed else []
    except (ValueError, IndexError):
        found = []
    return tuple(str(p) for p in found if isinstance(p, str) and os.path.isdir(p))


def ensure_env(spec: ImageSpec, interpreter: str, node: str, inherit_site: bool = False) -> Path:
    """The cell's virtual environment on this node, made once per content hash. Raises HostSetupFailed.

    ``inherit_site``: the environment also sees the interpreter's own packages (after its own), for a machine
    whose interpreter holds what cannot be installed there (a CUDA build of torch, no network): what pip would
    install and is there already is taken from there."""
    inherit = site_folders(interpreter) if inherit_site else ()
    key = env_key(spec, interpreter, inherit)
    venv = workspace.subdir("venvs") / key
    if (venv / READY).is_file():
        return venv
    with _locked(f"venv-{key}"):
        if (venv / READY).is_file():
            return venv
        if venv.exists():
            shutil.rmtree(venv)  # half made by a process that died
        log = workspace.subdir("venvs") / f"{key}.log"
        log.unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="matrix-run-venv-") as tmp:
            request = {
                "venv": str(venv),
                "pip_args": list(spec.pip_args),
                "requirements": [spec.pytest, *spec.extra, *spec.install],
                "inherit": list(inherit),
            }
            (Path(tmp) / "provision.json").write_text(json.dumps(request))
            extra = {}
            if spec.ca_bundle:
                (Path(tmp) / "ca.crt").write_bytes(spec.ca_bundle)
                extra["PIP_CERT"] = str(Path(tmp) / "ca.crt")
            folders = [w for w in spec.wheelhouses if Path(w).is_dir()]
            if folders:  # host cells install with pip, whatever image.installer says
                extra["PIP_FIND_LINKS"] = " ".join(folders)
            argv = [interpreter, str(SIDE_DIR / "provision.py"), str(Path(tmp) / "provision.json")]
            code = _run_logged(argv, _setup_env(extra), log, SETUP_TIMEOUT, cwd=tmp)
        if code != 0:
            raise HostSetupFailed(
                f"making the cell's environment on {node} with {interpreter} failed (exit {code}); log: {log}",
                _tail(log),
            )
        (venv / READY).write_text(key)
    return venv


def snapshot_key(venv: Path, req: ShardRequest) -> str:
    key = json.dumps(
        [venv.name, req.source_digest, req.install_project, list(req.roots), req.workdir, SOURCE_RECIPE, HOST_RECIPE]
    )
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def ensure_snapshot(venv: Path, req: ShardRequest, tarball: bytes, node: str) -> Path:
    """The project snapshot for this environment on this node: ``src`` (unpacked, bytecode made) and ``site``
    (the project installed). Raises images.SetupFailed when the project cannot be installed."""
    key = snapshot_key(venv, req)
    layer = workspace.subdir("host-src") / key
    if (layer / READY).is_file():
        return layer
    with _locked(f"snapshot-{key}"):
        if (layer / READY).is_file():
            return layer
        if layer.exists():
            shutil.rmtree(layer)
        layer.mkdir(mode=0o700)
        tar = source.node_copy(tarball, req.source_digest)
        log = layer / "prepare.log"
        env = _setup_env(
            {
                "PATH": f"{venv / 'bin'}:{BASE_PATH}",
                "VIRTUAL_ENV": str(venv),
                "MATRIX_RUN_HOST": "1",
                "MATRIX_RUN_INSTALL_TARGET": str(layer / "site"),
            }
        )
        argv = [
            str(venv / "bin" / "python"),
            str(SIDE_DIR / "prepare.py"),
            str(tar),
            str(layer / "src"),
            "1" if req.install_project else "0",
            json.dumps(list(req.roots)),
            req.workdir,
        ]
        code = _run_logged(argv, env, log, SETUP_TIMEOUT, cwd=str(layer))
        if code == SETUP_FAILED:
            raise images.SetupFailed(f"the project could not be installed on {node}", _tail(log))
        if code != 0:
            raise HostSetupFailed(f"preparing the project source on {node} failed (exit {code})", _tail(log))
        (layer / "site").mkdir(exist_ok=True)
        (layer / READY).write_text(key)
    return layer


def shard_environment(
    req: ShardRequest, venv: Path, layer: Path, work: Path, token: str, gpu_ids: tuple[str, ...] = ()
) -> dict[str, str]:
    """What the attempt's processes see: the request's variables (tests.env, pass-env, --env) and matrix-run's
    own, never the node's environment."""
    env = dict(req.env)
    env.update(gpu_environment(gpu_ids, env))
    pythonpath = f"{SIDE_DIR}:{layer / 'site'}"
    env.update(
        {
            "MATRIX_RUN": "1",
            "MATRIX_RUN_ID": req.run_id,
            "MATRIX_RUN_CELL": req.cell_id,
            "MATRIX_RUN_SHARD": req.shard,
            "MATRIX_RUN_ATTEMPT": str(req.attempt),
            "MATRIX_RUN_EXECUTOR": "host",
            "MATRIX_RUN_OWNER": req.owner,
            ENV_TOKEN: token,
            "PATH": f"{venv / 'bin'}:{env['PATH']}" if env.get("PATH") else f"{venv / 'bin'}:{BASE_PATH}",
            "VIRTUAL_ENV": str(venv),
            "PYTHONPATH": pythonpath + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "HOME": str(work / "home"),
            "TMPDIR": str(work / "tmp"),
            "LANG": env.get("LANG", "C.UTF-8"),
        }
    )
    return env


def gpu_environment(gpu_ids: tuple[str, ...], user_env: dict[str, str]) -> dict[str, str]:
    """What an attempt's processes are told about their GPUs. On the host every device is there, so
    CUDA_VISIBLE_DEVICES names Ray's ids themselves (the devices' own indices; ``cuda:k`` is the k-th of them),
    counted in PCI bus order as NVML and Ray count them; an attempt given no GPU sees none."""
    if not gpu_ids:
        return {"CUDA_VISIBLE_DEVICES": ""}
    return {
        "MATRIX_RUN_GPU_IDS": ",".join(gpu_ids),
        "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids),
        "CUDA_DEVICE_ORDER": user_env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
    }


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_tagged(name: str, value: str, prefix: bool = False) -> int:
    """Kill every process of this user on this node whose environment has ``name`` = ``value`` (or starts with
    it); the count. What a test started in a session of its own still carries the attempt's variables."""

    def match(env: dict[str, str]) -> bool:
        got = env.get(name)
        return got is not None and (got.startswith(value) if prefix else got == value)

    return _kill_where(match)


def kill_attempt(req: ShardRequest) -> int:
    """Kill the processes of one shard attempt on this node (what a cancelled attempt runs)."""
    want = {
        "MATRIX_RUN_ID": req.run_id,
        "MATRIX_RUN_CELL": req.cell_id,
        "MATRIX_RUN_SHARD": req.shard,
        "MATRIX_RUN_ATTEMPT": str(req.attempt),
    }
    return _kill_where(lambda env: all(env.get(k) == v for k, v in want.items())) if req.run_id else 0


def _kill_where(match: Callable[[dict[str, str]], bool]) -> int:
    import psutil

    found = []
    for proc in psutil.process_iter(["uids"]):
        if proc.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if proc.info["uids"] is not None and proc.info["uids"].real != os.getuid():
                continue
            if match(proc.environ()):
                found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(found, timeout=5)
    return len(found)


def kill_run_processes(run_id: str) -> int:
    """Every host-executor process of a run on this node (a cancelled task's worker dies before its shard does)."""
    return kill_tagged("MATRIX_RUN_ID", run_id) if run_id else 0


def sweep_processes() -> int:
    """Host-executor processes whose coordinator died on this host (SIGKILL, a lost session)."""
    import psutil

    owners: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["uids"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["uids"] is not None and proc.info["uids"].real != os.getuid():
                continue
            env = proc.environ()
            if env.get("MATRIX_RUN_EXECUTOR") == "host" and env.get("MATRIX_RUN_OWNER"):
                owners.setdefault(env["MATRIX_RUN_OWNER"], []).append(proc)
    killed = []
    for owner, procs in owners.items():
        if workspace.owner_alive(owner) is False:
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                    killed.append(proc)
    psutil.wait_procs(killed, timeout=5)
    return len(killed)


def _log_tail(path: Path, limit: int) -> bytes:
    """The newest ``limit`` bytes of the attempt's log (a suite that prints without end keeps its end)."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - limit))
            return fh.read()
    except OSError:
        return b""


def run_shard(
    req: ShardRequest, tarball: bytes, gpu_ids: tuple[str, ...] = (), inherit_site: bool = False
) -> ShardOutcome:
    """Run one shard attempt on this node to its end and return what it produced. Never raises for trouble of
    the node (a missing interpreter, a failed install): those are outcomes. ``inherit_site``: see ensure_env."""
    started = time.monotonic()
    node = socket.gethostname()
    attempt_id = f"{req.run_id}.{secrets.token_hex(6)}"
    work = workspace.work_dir(attempt_id)
    workspace.claim_run(attempt_id, workspace.owner_token())
    token = secrets.token_hex(16)
    exit_code: int | None = None
    timed_out = False
    infra = setup = ""
    log = b""
    try:
        interpreter = find_interpreter(req.python)
        if interpreter is None:
            setup = (
                f"node {node} has no interpreter {req.python!r} (looked up on PATH: {os.environ.get('PATH', '')}); "
                "install it there, or set image.python to its path"
            )
        else:
            venv = ensure_env(req.image, interpreter, node, inherit_site)
            layer = ensure_snapshot(venv, req, tarball, node)
            src = work / "src"
            shutil.copytree(layer / "src", src, symlinks=True)  # the attempt's own tree: tests may write into it
            for name in ("out", "home", "tmp"):
                (work / name).mkdir(mode=0o700)
            write_inputs(work / "out", req, str(src), str(work / "out"))
            env = shard_environment(req, venv, layer, work, token, gpu_ids)
            argv = [str(venv / "bin" / "python"), str(SIDE_DIR / "entry.py"), str(work / "out" / "request.json")]
            with open(work / "shard.log", "wb") as fh:
                exit_code = _run_group(argv, env, str(src), fh, req.timeout)
                timed_out = exit_code is None
            log = _log_tail(work / "shard.log", req.output_limit)
    except images.SetupFailed as exc:
        exit_code = SETUP_FAILED
        log = exc.log_tail.encode()
    except HostSetupFailed as exc:
        setup = str(exc)
        log = exc.log_tail.encode()
    except OSError as exc:
        infra = f"host: {exc.__class__.__name__}: {exc}"[:500]
    finally:
        kill_tagged(ENV_TOKEN, token)  # what left the group (its own session) still carries the token
        report_out = outputs.read_output(work / "out", "report.jsonl", req.output_limit)
        coverage_out = outputs.read_output(work / "out", ".coverage", req.output_limit)
        workspace.release_run(attempt_id)
    problems = [o.problem for o in (report_out, coverage_out) if o.problem]
    return ShardOutcome(
        cell_id=req.cell_id,
        shard=req.shard,
        attempt=req.attempt,
        exit_code=exit_code,
        report=mask_report(report_out.data, req.env),
        log=mask_secrets(log, req.env),
        coverage=coverage_out.data,
        duration=time.monotonic() - started,
        timed_out=timed_out,
        infra_error=infra,
        node=node,
        gpu_ids=tuple(gpu_ids),
        output_problem="; ".join(problems),
        setup_error=setup,
    )


# ------------------------------------------------------------------------------------- without Ray: one machine


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.executors.host MATRIX``: each host cell of a matrix file as one shard through this
    executor, on this machine, with neither Ray nor Docker nor a coordinator: the executor's own path (environment,
    snapshot, process group, plugin, report), for checking a machine (scripts/gpu-check.sh). Prints each shard's
    log and one summary line per cell; the exit code is matrix-run's (0 passed, 1 failed, 3 infra, 5 no tests)."""
    import argparse
    import sys

    from runner import config, matrix, results
    from runner.errors import ExitCode, UserError

    parser = argparse.ArgumentParser(prog="python -m runner.executors.host", description=main.__doc__)
    parser.add_argument("matrix", help="a matrix file whose cells are executor: host")
    parser.add_argument("--select", action="append", default=[], metavar="AXIS=VALUE")
    parser.add_argument(
        "--gpus",
        default=None,
        metavar="IDS",
        help="the GPUs to pin GPU cells to, as this machine numbers them (e.g. 0 or 2,3; default: "
        "CUDA_VISIBLE_DEVICES); a cell gets as many of them as resources.gpus asks for",
    )
    parser.add_argument("--python", default="", help="the interpreter to make the environment from (image.python)")
    parser.add_argument(
        "--inherit-site-packages",
        action="store_true",
        help="the environment also sees the interpreter's own packages (torch built for this machine's CUDA)",
    )
    parser.add_argument("--out", default="", help="a folder for each cell's shard log and report")
    args = parser.parse_args(argv)
    given = args.gpus if args.gpus is not None else os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = tuple(g.strip() for g in given.split(",") if g.strip())
    try:
        mf = config.load(args.matrix)
        cells = matrix.expand(mf, args.select)
        for cell in cells:
            if cell.executor != "host":
                raise UserError(f"cell {cell.id} is executor: {cell.executor}; this runs host cells only")
            if len(ids) < cell.resources.gpus:
                raise UserError(
                    f"cell {cell.id} asks for {cell.resources.gpus:g} GPU(s) and {len(ids)} are given; "
                    "name them with --gpus IDS (or CUDA_VISIBLE_DEVICES)"
                )
        specs = images.specs_for(mf, cells)
        tree = source.snapshot(mf.project)
    except UserError as exc:
        print(f"matrix-run: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    run_id = f"{mf.name}-here-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    codes = []
    for cell in cells:
        gpu_ids = ids[: math.ceil(cell.resources.gpus)]  # a fraction of a GPU is still that GPU
        req = ShardRequest(
            run_id=run_id,
            cell_id=cell.id,
            shard="shard-1of1",
            attempt=1,
            image=specs[cell.id],
            command=cell.command,
            files=(),
            complement=True,  # leaves no file to another shard: the whole suite
            roots=mf.tests.paths,
            timeout=mf.tests.timeout,
            resources=cell.resources,
            env=cell.env,
            network=mf.tests.network,
            install_project=mf.tests.install_project,
            source_digest=tree.digest,
            workdir=mf.tests.workdir,
            user=mf.tests.user,
            output_limit=mf.tests.output_limit,
            owner=workspace.owner_token(),
            executor="host",
            python=args.python or cell.python,
        )
        outcome = run_shard(req, tree.tarball, gpu_ids, inherit_site=args.inherit_site_packages)
        attempt = results.evaluate(outcome, req.timeout)
        tests = results.fold([attempt])
        status, reason = results.cell_status(tests, [attempt])
        if args.out:
            folder = Path(args.out) / cell.id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "shard.log").write_bytes(outcome.log)
            (folder / "report.jsonl").write_bytes(outcome.report)
        sys.stdout.write(outcome.log.decode("utf-8", "replace"))
        counts = {s: sum(h.status is s for h in tests.values()) for s in results.Status}
        for history in tests.values():
            case = history.final
            if history.status is not results.Status.PASSED:
                first = case.message.splitlines()[0] if case.message else ""
                print(f"host-run:   {history.status} {case.nodeid or case.name}: {first}")
        print(
            f"host-run: cell {cell.id}: {status}: {len(tests)} test(s), {counts[results.Status.PASSED]} passed, "
            f"{counts[results.Status.FAILED] + counts[results.Status.ERROR]} failed, "
            f"{counts[results.Status.SKIPPED]} skipped, in {outcome.duration:.1f} s on {outcome.node}, "
            f"GPU ids {','.join(outcome.gpu_ids) or 'none'}{f' ({reason})' if reason else ''}",
            flush=True,
        )
        codes.append(
            {
                results.Status.PASSED: ExitCode.OK,
                results.Status.FLAKY: ExitCode.OK,
                results.Status.NO_TESTS: ExitCode.NO_TESTS,
                results.Status.INFRA: ExitCode.INTERNAL,
            }.get(status, ExitCode.TESTS_FAILED)
        )
    worst = [c for c in (ExitCode.INTERNAL, ExitCode.TESTS_FAILED, ExitCode.NO_TESTS) if c in codes]
    return int(worst[0]) if worst else int(ExitCode.OK)


if __name__ == "__main__":
    raise SystemExit(main())
