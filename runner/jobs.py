"""``matrix-run run MATRIX --submit URL`` and ``matrix-run attach JOB_ID``: the coordinator as a Ray Job.

The client packs a working folder (the project's snapshot, as shards would get it, plus the matrix file with its
``project:`` pointed at it, quarantine files and a Dockerfile kept outside the project) and submits a job through
the Jobs API (``JobSubmissionClient``, the token as an ``Authorization: Bearer`` header). The job's entrypoint is
this module's ``run-job`` wrapper: it runs ``python -m runner.cli run ...`` in a child process, then stores the
run's exit code and a tar.gz of its whole output folder in the GCS's internal key-value store. The client follows
the job's log, and at the end fetches the outputs with a tiny second job (``fetch``) that prints them, base64, into
its own log, which the client reads through the Jobs API.

Why the GCS key-value store: it lives on the head, in the cluster itself, so the outputs outlive the client (a
killed CLI, a laptop that went to sleep: ``attach`` collects them later) and do not depend on which node ran the
job or on any shared filesystem; and reading them back needs nothing but the Jobs API port the client already
uses (no GCS port, no local Ray). The data channel is separate from the log: nothing a test prints can pass for
outputs. A fetch removes the outputs from the store; the fetch job's log holds them until the client has written
them, so a client that dies in between still finds them there.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import EnvironmentProblem, ExitCode, UserError

KV_NAMESPACE = b"matrix-run"
CHUNK = 4 * 1024 * 1024  # bytes per key-value entry (well under Ray's gRPC message limit)
MAX_ARCHIVE = 512 * 1024 * 1024  # outputs larger than this stay on the node that ran the job
JOB_DIR = "matrix-run-job"  # in the working folder: the matrix file, quarantine files, env.json
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
FETCH_TIMEOUT = 300.0
# run flags the client handles itself; the rest travel to the job as written
LOCAL_ONLY = ("--submit", "--out", "--force", "--token-file", "--plain", "--address", "--quarantine", "--env")


@dataclass(frozen=True)
class Stored:
    """What a finished job left in the key-value store (``meta``): the run's own exit code and its archive."""

    exit_code: int
    size: int
    sha256: str
    chunks: int
    note: str = ""


# ------------------------------------------------------------------------------------------------ client side


def _auth_headers(url: str, token_file: str | None) -> dict[str, str]:
    """The Authorization header for the Jobs API: --token-file, RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, the token of the
    cluster `cluster up` recorded here when ``url`` is its Jobs API; none otherwise."""
    from runner import local_cluster

    path = token_file or os.environ.get("RAY_AUTH_TOKEN_PATH") or ""
    token = ""
    if token_file:
        token = local_cluster.read_token(token_file)
    elif os.environ.get("RAY_AUTH_TOKEN"):
        token = os.environ["RAY_AUTH_TOKEN"].strip()
    elif path:
        token = local_cluster.read_token(path)
    else:
        recorded = local_cluster.token_for(url)
        if recorded:
            token = local_cluster.read_token(recorded)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _client(url: str, token_file: str | None) -> Any:
    import logging

    from ray.job_submission import JobSubmissionClient

    for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk", "ray._private.runtime_env"):
        logging.getLogger(name).setLevel(logging.WARNING)  # its upload and websocket INFO lines are noise here

    if not url.startswith(("http://", "https://")):
        raise UserError(f"{url!r}: give the Jobs API as a URL, e.g. http://HEAD:8265")
    try:
        return JobSubmissionClient(url, headers=_auth_headers(url, token_file))
    except Exception as exc:
        raise EnvironmentProblem(_api_problem(url, exc)) from None


def _api_problem(url: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else exc.__class__.__name__
    if "Authentication" in first or "401" in first or "403" in first:
        return (
            f"the Jobs API at {url} refused the request ({first[:120]}); give the cluster's token with --token-file "
            "FILE or RAY_AUTH_TOKEN"
        )
    return f"the Jobs API at {url} did not answer ({first[:160]}); check the URL (http://HEAD:8265) and the network"


def _call(url: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise EnvironmentProblem(_api_problem(url, exc)) from None


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]  # type: ignore[no-any-return]
    raise RuntimeError("the parser has no run command")


def forwarded_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """The run's flags as the user wrote them, less the matrix file and what the client handles itself."""
    run = _run_parser(parser)
    takes_value = {
        opt: action.nargs != 0 for action in run._actions for opt in action.option_strings if action.option_strings
    }
    tokens = list(argv)
    if tokens and tokens[0] == "run":
        tokens = tokens[1:]
    out: list[str] = []
    i = 0
    positional_seen = False
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            break
        if tok.startswith("-") and tok != "-":
            name, eq, _ = tok.partition("=")
            value_next = takes_value.get(name, False) and not eq
            group = [tok, tokens[i + 1]] if value_next and i + 1 < len(tokens) else [tok]
            i += len(group)
            if name not in LOCAL_ONLY:
                out.extend(group)
            continue
        if positional_seen:
            out.append(tok)
        positional_seen = True
        i += 1
    return out


def _raw_values(argv: Sequence[str], flag: str) -> list[str]:
    """The raw values of a repeatable flag in argv (``--quarantine FILE``, ``--env NAME=VALUE``)."""
    values = []
    tokens = list(argv)
    for i, tok in enumerate(tokens):
        if tok == flag and i + 1 < len(tokens):
            values.append(tokens[i + 1])
        elif tok.startswith(flag + "="):
            values.append(tok[len(flag) + 1 :])
    return values


def rewrite_matrix(text: str, project: str, dockerfile: str | None) -> str:
    """The matrix file's text with ``project:`` (and ``image.dockerfile:``) replaced, everything else as written
    (values keep their text, lines keep their numbers)."""
    import yaml

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise UserError("--submit: the matrix file must be a block YAML mapping")
    edits: list[tuple[int, int, str]] = []
    found_project = False
    for key, value in root.value:
        if key.value == "project" and isinstance(value, yaml.ScalarNode):
            edits.append((value.start_mark.index, value.end_mark.index, json.dumps(project)))
            found_project = True
        if key.value == "image" and isinstance(value, yaml.MappingNode) and dockerfile is not None:
            for k2, v2 in value.value:
                if k2.value == "dockerfile" and isinstance(v2, yaml.ScalarNode):
                    edits.append((v2.start_mark.index, v2.end_mark.index, json.dumps(dockerfile)))
    for start, end, new in sorted(edits, reverse=True):
        text = text[:start] + new + text[end:]
    if not found_project:
        text = text.rstrip("\n") + f"\nproject: {json.dumps(project)}\n"
    return text


def _working_dir(args: argparse.Namespace, mf: Any, argv: Sequence[str]) -> tuple[Path, list[str]]:
    """A private temp folder for the job's runtime_env working_dir, and the job-side flags it adds."""
    from runner import source

    wd = Path(tempfile.mkdtemp(prefix="matrix-run-submit-"))
    try:
        tree = source.snapshot(mf.project)
        source.extract(tree.tarball, wd / "project")
        job = wd / JOB_DIR
        job.mkdir()
        dockerfile = None
        if mf.image.dockerfile is not None:
            try:
                dockerfile = "../project/" + mf.image.dockerfile.relative_to(mf.project).as_posix()
            except ValueError:
                shutil.copyfile(mf.image.dockerfile, job / "Dockerfile.outside")
                dockerfile = "Dockerfile.outside"
        matrix = Path(args.matrix)
        (job / matrix.name).write_text(rewrite_matrix(matrix.read_text(encoding="utf-8"), "../project", dockerfile))
        extra = ["run", f"{JOB_DIR}/{matrix.name}"]
        for i, qfile in enumerate(_raw_values(argv, "--quarantine")):
            name = f"quarantine-{i}.yaml"
            shutil.copyfile(qfile, job / name)
            extra += ["--quarantine", f"{JOB_DIR}/{name}"]
        from runner.cli import container_env

        env = dict(container_env(mf, args.env))  # the values travel in env.json, only the names on the command line
        extra += [a for item in args.env for a in ("--env", item.partition("=")[0])]
        fd = os.open(job / "env.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(env, fh)
    except BaseException:
        shutil.rmtree(wd, ignore_errors=True)
        raise
    return wd, extra


def _runner_dir() -> str:
    import runner

    return str(Path(runner.__file__).resolve().parent)


def _job_id(name: str) -> str:
    return f"matrix-run-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def submit_run(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """``run MATRIX --submit URL``: the run as a Ray Job; follows it and collects its outputs into --out."""
    from runner import config, outdir

    if args.address:
        raise UserError("--submit and --address: the job runs on the cluster behind the Jobs API; give only --submit")
    url = args.submit.rstrip("/")
    mf = config.load(args.matrix)  # mistakes are reported here, with the local file's lines
    out = Path(args.out or Path(".matrix-run") / mf.name)
    job_id = _job_id(mf.name)
    folder = outdir.claim(out, job_id, force=args.force)  # refused now, not after the run
    client = _client(url, args.token_file)
    wd, job_args = _working_dir(args, mf, argv)
    flags = forwarded_flags(argv, parser)
    entry = shlex.join(["python", "-m", "runner.jobs", "run-job", job_id, "--", *job_args, *flags, "--plain"])
    runtime_env = {
        "working_dir": str(wd),
        "py_modules": [_runner_dir()],
        "env_vars": {
            # the coordinator's own ray.init(runtime_env=py_modules) replaces the job's for its shard tasks
            "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1",
            "RAY_JOB_STOP_WAIT_TIME_S": "120",
            "PYTHONUNBUFFERED": "1",
        },
    }
    old = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE")
    os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = "1"  # the snapshot is git's view already
    try:
        _call(
            url,
            client.submit_job,
            entrypoint=entry,
            submission_id=job_id,
            runtime_env=runtime_env,
            metadata={"matrix-run": "run", "matrix": mf.name},
        )
    finally:
        if old is None:
            os.environ.pop("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", None)
        else:
            os.environ["RAY_RUNTIME_ENV_IGNORE_GITIGNORE"] = old
        shutil.rmtree(wd, ignore_errors=True)
    print(f"matrix-run: submitted job {job_id} to {url}", flush=True)
    print(
        f"matrix-run: following its log (the job goes on if this ends; `matrix-run attach {job_id}` follows it again)",
        flush=True,
    )
    try:
        return _follow_and_collect(client, url, job_id, folder)
    finally:
        folder.release()


def attach(job_id: str, out: str | None, address: str | None, token_file: str | None, force: bool = False) -> int:
    """``attach JOB_ID``: follow a submitted run again (or at once fetch the outputs of one that ended)."""
    from runner import local_cluster, outdir

    url = address or os.environ.get("RAY_API_SERVER_ADDRESS") or ""
    if not url:
        with contextlib.suppress(UserError, OSError):
            state = local_cluster.load_state()
            url = state.dashboard_url if state is not None else ""
    if not url:
        raise UserError("attach: give --address http://HEAD:8265 (the Jobs API the job was submitted to)")
    url = url.rstrip("/")
    client = _client(url, token_file)
    try:
        info = client.get_job_info(job_id)
    except Exception as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise UserError(f"attach: no job {job_id!r} at {url}; `ray job list` names the jobs there") from None
        raise EnvironmentProblem(_api_problem(url, exc)) from None
    meta = info.metadata or {}
    if meta.get("matrix-run") != "run":
        raise UserError(f"attach: job {job_id} was not submitted by `matrix-run run --submit`")
    folder = outdir.claim(Path(out or Path(".matrix-run") / meta.get("matrix", job_id)), job_id, force=force)
    try:
        return _follow_and_collect(client, url, job_id, folder)
    finally:
        folder.release()


def _status(client: Any, url: str, job_id: str) -> str:
    return str(_call(url, client.get_job_status, job_id).value)


def _tail(client: Any, job_id: str) -> None:
    async def run() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(run())


def _wants_stop(job_id: str) -> bool:
    """After Ctrl-C: ask on a terminal whether to stop the job; without one, stop it."""
    if not sys.stdin.isatty():
        return True
    try:
        answer = input(f"\nmatrix-run: stop job {job_id} on the cluster? [y/N] ")
    except (KeyboardInterrupt, EOFError):
        return True
    return answer.strip().lower() in ("y", "yes")


def _follow_and_collect(client: Any, url: str, job_id: str, folder: Any) -> int:
    stopping = False
    while True:
        try:
            with contextlib.suppress(Exception):  # a dropped websocket: the status loop below decides
                _tail(client, job_id)
            while _status(client, url, job_id) not in TERMINAL:
                time.sleep(1.0)
            break
        except KeyboardInterrupt:
            if stopping:
                print(f"matrix-run: left job {job_id} stopping; `matrix-run attach {job_id}`", file=sys.stderr)
                return int(ExitCode.INTERRUPTED)
            if not _wants_stop(job_id):
                print(
                    f"matrix-run: job {job_id} goes on; `matrix-run attach {job_id}` follows it again",
                    file=sys.stderr,
                )
                return int(ExitCode.INTERRUPTED)
            print(f"matrix-run: stopping job {job_id} (its coordinator removes its containers)", file=sys.stderr)
            _call(url, client.stop_job, job_id)
            stopping = True
    final = _status(client, url, job_id)
    stored = fetch_outputs(client, url, job_id, folder.path)
    if stored is None:
        info = _call(url, client.get_job_info, job_id)
        message = (info.message or "").strip().splitlines()
        raise EnvironmentProblem(
            f"job {job_id} ended ({final}) without leaving the run's outputs"
            + (f": {message[0][:200]}" if message else "")
            + f"; its log: `ray job logs {job_id}`"
        )
    print(f"matrix-run: job {job_id} {final}; outputs in {folder.path}; exit code {stored.exit_code}", flush=True)
    return stored.exit_code


def _parse_fetch_log(log: str, nonce: str) -> tuple[Stored | None, bytes, str]:
    """(what was stored, the archive, when an earlier fetch took it: "" unless so) from a fetch job's log."""
    begin, end, taken = f"{nonce} BEGIN ", f"{nonce} END", f"{nonce} FETCHED "
    meta: Stored | None = None
    chunks: list[str] = []
    inside = False
    fetched = ""
    for line in log.splitlines():
        if line.startswith(taken):
            fetched = line[len(taken) :].strip()
        elif line.startswith(begin):
            data = json.loads(line[len(begin) :])
            meta = Stored(**data) if data else None
            inside = True
        elif line == end:
            inside = False
        elif inside:
            chunks.append(line.strip())
    return meta, base64.b64decode("".join(chunks)) if chunks else b"", fetched


def fetch_outputs(client: Any, url: str, job_id: str, out: Path) -> Stored | None:
    """The run's outputs from the cluster into ``out`` (a claimed output folder); None when the job left none."""
    fetches = [
        j
        for j in _call(url, client.list_jobs)
        if (j.metadata or {}).get("matrix-run") == "fetch" and (j.metadata or {}).get("of") == job_id
    ]
    earlier = [j for j in fetches if str(j.status.value) == "SUCCEEDED"]
    if earlier:  # a client that died after fetching: the outputs are in that fetch job's log
        fetch_id, nonce = earlier[0].submission_id, earlier[0].metadata.get("nonce", "")
    else:
        nonce = secrets.token_hex(16)
        fetch_id = _call(
            url,
            client.submit_job,
            entrypoint=shlex.join(["python", "-m", "runner.jobs", "fetch", job_id, nonce]),
            runtime_env={"py_modules": [_runner_dir()]},
            metadata={"matrix-run": "fetch", "of": job_id, "nonce": nonce},
        )
        deadline = time.monotonic() + FETCH_TIMEOUT
        while (status := _status(client, url, fetch_id)) not in TERMINAL:
            if time.monotonic() > deadline:
                raise EnvironmentProblem(f"fetching the outputs of job {job_id} took over {FETCH_TIMEOUT:.0f} s")
            time.sleep(0.5)
        if status != "SUCCEEDED":
            log = _call(url, client.get_job_logs, fetch_id)
            raise EnvironmentProblem(f"fetching the outputs of job {job_id} failed: {log.strip()[-300:]}")
    meta, data, fetched = _parse_fetch_log(_call(url, client.get_job_logs, fetch_id), nonce)
    if meta is None:
        with contextlib.suppress(Exception):
            client.delete_job(fetch_id)
        if fetched:
            raise UserError(
                f"the outputs of job {job_id} were collected already ({fetched}, by the --submit that followed it or "
                "an earlier attach): they are in that --out folder"
            )
        return None
    if hashlib.sha256(data).hexdigest() != meta.sha256 or len(data) != meta.size:
        raise EnvironmentProblem(f"the outputs of job {job_id} came back damaged (size or sha256 differ)")
    if data:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(out, filter="data")
    if meta.note:
        print(f"matrix-run: {meta.note}", file=sys.stderr)
    with contextlib.suppress(Exception):
        client.delete_job(fetch_id)  # its log held the outputs; they are written now
    return meta


# ------------------------------------------------------------------------------------------------ job side


def _gcs() -> Any:
    from ray._raylet import GcsClient  # type: ignore[attr-defined]

    address = os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise EnvironmentProblem("not inside a Ray job (RAY_ADDRESS is not set)")
    return GcsClient(address=address)


def _key(job_id: str, part: str) -> bytes:
    return f"outputs/{job_id}/{part}".encode()


def pack(out: Path) -> bytes:
    """The output folder as tar.gz (without the folder's marker and lock: the client's folder has its own)."""
    from runner import outdir

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if out.is_dir():
            for path in sorted(out.rglob("*")):
                rel = path.relative_to(out).as_posix()
                if rel in (outdir.MARKER, outdir.LOCK) or path.is_symlink():
                    continue
                if path.is_dir() or path.is_file():
                    tar.add(path, arcname=rel, recursive=False)
    return buf.getvalue()


def store(job_id: str, exit_code: int, data: bytes, note: str = "") -> Stored:
    gcs = _gcs()
    chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
    for i, chunk in enumerate(chunks):
        gcs.internal_kv_put(_key(job_id, f"{i:05d}"), chunk, True, KV_NAMESPACE)
    meta = Stored(exit_code, len(data), hashlib.sha256(data).hexdigest(), len(chunks), note)
    gcs.internal_kv_put(_key(job_id, "meta"), json.dumps(meta.__dict__).encode(), True, KV_NAMESPACE)
    return meta


def _child_code(rc: int) -> int:
    if rc >= 0:
        return rc
    return int(ExitCode.INTERRUPTED) if -rc in (signal.SIGTERM, signal.SIGINT) else int(ExitCode.INTERNAL)


def run_job(job_id: str, argv: list[str]) -> int:
    """The job's entrypoint: the run in a child process, then its exit code and outputs into the key-value store.

    ``stop_job`` signals the whole process tree (SIGTERM): the coordinator handles it (containers removed, partial
    reports, exit 2); this wrapper only waits, then stores what the run left.
    """
    from runner import workspace

    if not argv or argv[0] != "run":
        raise UserError("run-job: expected `run MATRIX ...` after --")
    jobs = workspace.subdir("jobs")
    own = jobs / job_id
    own.mkdir(mode=0o700)
    out = own / "out"
    cmd = [sys.executable, "-m", "runner.cli", *argv, "--out", str(out)]
    if "--history" not in argv and not any(a.startswith("--history=") for a in argv):
        cmd += ["--history", str(jobs / "history.sqlite")]
    env = dict(os.environ)
    env_file = Path(JOB_DIR) / "env.json"
    if env_file.is_file():
        env.update(json.loads(env_file.read_text(encoding="utf-8")))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)  # the child got the same signal: wait for it to finish its cleanup

    def unblock() -> None:  # Ray blocks SIGINT in its processes; the coordinator handles both
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})

    print(f"matrix-run job {job_id}: {shlex.join(cmd[2:])}", flush=True)
    child = subprocess.Popen(cmd, env=env, preexec_fn=unblock)  # noqa: PLW1509  # only signal masks, no locks
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:
            continue
    code = _child_code(rc)
    data = pack(out)
    note = ""
    if len(data) > MAX_ARCHIVE:
        note = f"the outputs ({len(data) >> 20} MiB) were too big to bring back; they stay in {out} on the job's node"
        data = b""
    meta = store(job_id, code, data, note)
    if not note:
        shutil.rmtree(own, ignore_errors=True)
    print(f"matrix-run job {job_id}: run exit code {code}; outputs stored ({meta.size} bytes)", flush=True)
    return code


def fetch(job_id: str, nonce: str) -> int:
    """The fetch job's entrypoint: the stored outputs, base64, between markers in its own log; then removed."""
    gcs = _gcs()
    raw = gcs.internal_kv_get(_key(job_id, "meta"), KV_NAMESPACE)
    if raw is None:
        fetched = gcs.internal_kv_get(f"fetched/{job_id}".encode(), KV_NAMESPACE)
        if fetched is not None:
            print(f"{nonce} FETCHED {fetched.decode()}")
        print(f"{nonce} BEGIN {{}}")
        print(f"{nonce} END")
        return 0
    meta = Stored(**json.loads(raw))
    data = b"".join(gcs.internal_kv_get(_key(job_id, f"{i:05d}"), KV_NAMESPACE) or b"" for i in range(meta.chunks))
    print(f"{nonce} BEGIN {json.dumps(meta.__dict__)}")
    text = base64.b64encode(data).decode()
    for i in range(0, len(text), 76 * 1024):
        print(text[i : i + 76 * 1024])
    print(f"{nonce} END", flush=True)
    gcs.internal_kv_del(f"outputs/{job_id}/".encode(), True, KV_NAMESPACE)
    gcs.internal_kv_put(f"fetched/{job_id}".encode(), time.strftime("%Y-%m-%d %H:%M:%S").encode(), True, KV_NAMESPACE)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) >= 2 and args[0] == "run-job":
            rest = args[2:]
            if rest and rest[0] == "--":
                rest = rest[1:]
            return run_job(args[1], rest)
        if len(args) == 3 and args[0] == "fetch":
            return fetch(args[1], args[2])
    except UserError as exc:
        print(f"matrix-run: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    print("usage: python -m runner.jobs run-job JOB_ID -- run MATRIX ... | fetch JOB_ID NONCE", file=sys.stderr)
    return int(ExitCode.USAGE)


if __name__ == "__main__":
    sys.exit(main())
