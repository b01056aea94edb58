"""``matrix-run``: argument parsing and the run as a short pipeline of typed steps.

This is the only place that prints user errors and picks exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from runner import __version__, config, matrix, plan
from runner.errors import ExitCode, UserError
from runner.history import History

if TYPE_CHECKING:
    pass


def print_plan(planned: plan.Planned) -> None:
    print(f"{planned.mf.name}: {len(planned.cells)} cell(s), project {planned.mf.project}")
    auto = " (tests.shards: auto)" if planned.auto else ""
    print(f"  {planned.slots} slot(s){auto}: predicted ~{planned.makespan:.1f}s for the whole matrix")
    for cell in planned.cells:
        shards = planned.shards[cell.id]
        print(
            f"  {cell.id}  image base {cell.base}  {len(shards)} shard(s), predicted from {planned.basis[cell.id]}, "
            f"~{planned.fixed_costs[cell.id]:.1f}s fixed per shard"
        )
        for s in shards:
            extra = f" (+{len(s.only)} named tests)" if s.only else ""
            extra += f" (-{len(s.skip)} tests run elsewhere)" if s.skip else ""
            first = " + any file no other shard names" if s.index == 1 and len(shards) > 1 else ""
            slot, start = planned.schedule[s.id]
            print(
                f"    {s.slug}  ~{s.predicted:.1f}s  slot {slot + 1} at ~{start:.1f}s  {len(s.files)} file(s)"
                f"{extra}{first}: {' '.join(s.files)}"
            )


def print_placement(cells: Sequence[matrix.Cell], address: str | None) -> None:
    """Where each cell can run on the cluster the run would join: its nodes by label, GPUs, executor."""
    from runner import cluster, scheduler

    address = cluster.resolve_address(address)
    if address and address != cluster.EMBEDDED:
        cluster.connect(address)
        nodes, where = cluster.alive_nodes(), f"the Ray cluster at {address}"
    else:
        nodes, where = [cluster.local_node()], "this machine (no cluster)"
    print(f"placement on {where}: {len(nodes)} node(s)")
    for node in nodes:
        labels = ", ".join(sorted(node.labels)) or "none"
        engine_note = "" if node.docker else ", no Docker engine"
        print(f"  node {node.node_id[:12]}: {node.cpus:g} CPU(s), {node.gpus:g} GPU(s), labels {labels}{engine_note}")
    for cell in cells:
        proto = scheduler.request_shape(cell)
        why = scheduler.why_unservable(nodes, proto)
        fits = scheduler.eligible(nodes, proto)
        runs_on = f" runs-on {cell.runs_on}" if cell.runs_on else ""
        if why:
            print(f"  {cell.id} ({cell.executor}{runs_on}): no_capacity: {why}")
        else:
            print(f"  {cell.id} ({cell.executor}{runs_on}): on {', '.join(n.node_id[:12] for n in fits)}")


def container_env(mf: config.MatrixFile, extra: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Host variables for the containers: tests.pass-env and --env (tests.env is per cell, see Cell.env)."""
    env: dict[str, str] = {}
    for name in mf.tests.pass_env:
        if name in os.environ:
            env[name] = os.environ[name]
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise UserError(f"--env {key}: not set on this host; write --env NAME=VALUE or export it")
            value = os.environ[key]
        env[key] = value
    return tuple(env.items())


def _history(args: argparse.Namespace) -> History:
    path = Path(args.history or os.environ.get("MATRIX_RUN_HISTORY") or Path(".matrix-run") / "history.sqlite")
    return History(path.resolve())


def cmd_run(args: argparse.Namespace) -> int:
    """The run as a pipeline: plan -> cache -> images and execute -> quarantine -> reports -> history."""
    from runner import cache, coordinator, engine, images, outdir, quarantine, reports, summary, workspace

    if getattr(args, "submit", None):
        from runner import jobs

        return jobs.submit_run(args, getattr(args, "raw_argv", sys.argv[1:]), build_parser())
    history = _history(args)
    joined = None
    slots = None
    address = None
    if not args.dry_run:
        from runner import cluster

        address = cluster.resolve_address(args.address)
    if address:
        # shards: auto sizes for the cluster the run is on: ask it before planning
        joined = cluster.connect(address)
        slots = cluster.slots_for(cluster.capacity(), config.load(args.matrix), args.max_parallel)
    planned = plan.plan_matrix(args.matrix, args.select, args.shards, history, args.max_parallel, slots=slots)
    if args.dry_run:
        print_plan(planned)
        print_placement(planned.cells, args.address)
        return ExitCode.OK
    mf = planned.mf
    env = container_env(mf, args.env)
    run_id = f"{mf.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    out_folder = outdir.claim(Path(args.out or Path(".matrix-run") / mf.name), run_id, force=args.force)
    # the docker executor needs this machine's engine (to check bases and build images); host cells do not
    client = engine.connect() if any(c.executor == "docker" for c in planned.cells) else None
    specs = images.specs_for(mf, planned.cells, client)
    keys, cached = cache.split(history, mf, planned.cells, specs, planned.tree.digest, env, args.cache)
    if client is not None:
        bases = {c.id: specs[c.id] for c in planned.cells if c.id not in cached and c.executor == "docker"}
        images.check_bases(client, bases)
    held = (*mf.quarantine, *(entry for listed in args.quarantine for entry in listed))
    for warning in quarantine.unknown_axes(held, {a for c in planned.cells for a in c.axes}):
        print(f"matrix-run: {warning}", file=sys.stderr)
    options = coordinator.RunOptions(
        run_id=run_id,
        out=out_folder.path,
        address=address,  # resolved above, so a recorded cluster is not looked up twice; None: this machine alone
        max_parallel=args.max_parallel if args.max_parallel is not None else mf.strategy.max_parallel,
        fail_fast=mf.strategy.fail_fast if args.fail_fast is None else args.fail_fast,
        flaky_retries=mf.retries.flaky if args.retries is None else args.retries,
        infra_retries=mf.retries.infra,
        env=env,
        owner=workspace.owner_token(),
        cluster=joined,
        quarantine=held,
    )
    ran, results = coordinator.execute(
        mf, planned.cells, planned.shards, cached, specs, planned.tree, options, args.plain
    )
    results = quarantine.apply(results, held)  # quarantined failures set no exit code; ran.cells stay as they ran
    status, code = summary.run_status(results, args.strict_flaky, args.skip_unavailable)
    reports.write_all(results, mf, out_folder.path, status, code, history, planned.scope)
    history.record_run(planned.scope, run_id, planned.tree.digest, ran.cells)  # durations and the flake ledger
    cache.remember_all(history, planned.scope, keys, ran.cells)
    history.close()
    out_folder.release()
    if ran.cluster_lost:
        # Ray's core ends a process whose GCS is gone after a minute, and its exit handler would block on it:
        # the reports are written, so leave now with the run's own code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    return code


def cmd_list(args: argparse.Namespace) -> int:
    mf = config.load(args.matrix)
    cells = matrix.expand(mf, args.select)
    if args.json:
        listed = [
            {"id": c.id, "axes": c.axes, "image": c.base, "runs_on": c.runs_on, "executor": c.executor} for c in cells
        ]
        print(json.dumps(listed, indent=2))
    else:
        for c in cells:
            print(f"{c.id}\t{' '.join(f'{k}={v}' for k, v in c.values)}")
    return ExitCode.OK


def cmd_images_bootstrap(args: argparse.Namespace) -> int:
    from runner import engine, images

    if not config.SAFE_NAME.match(args.suite):
        raise UserError(f"images bootstrap {args.suite!r}: give a Debian suite name such as bookworm")
    tag = args.tag or f"matrix-run/debian:{args.suite}"
    client = engine.connect()
    started = time.monotonic()
    try:
        image_id = images.bootstrap(client, args.suite, tag)
    except images.BuildFailed as exc:
        raise UserError(f"images bootstrap {args.suite}: {exc}\n{exc.log_tail}", ExitCode.INTERNAL) from None
    print(f"{tag} {image_id} ({time.monotonic() - started:.0f}s)")
    return ExitCode.OK


def cmd_flakes(args: argparse.Namespace) -> int:
    from runner import flakes

    if args.last < 1 or args.lift_after < 1:
        raise UserError(f"--{'last' if args.last < 1 else 'lift-after'} must be >= 1")
    if not 0 <= args.threshold <= 2:
        raise UserError(f"--threshold {args.threshold:g}: a flip rate is between 0 and 2")
    path = Path(args.history or os.environ.get("MATRIX_RUN_HISTORY") or Path(".matrix-run") / "history.sqlite")
    if not path.is_file():
        raise UserError(f"--history {path}: no history store there (a run writes it; see matrix-run run --history)")
    entries = [entry for listed in args.quarantine for entry in listed]
    scopes = None
    if args.matrix:
        mf = config.load(args.matrix)
        scopes = [plan.history_scope(mf)]
        entries = [*mf.quarantine, *entries]
    history = _history(args)
    try:
        found = flakes.find(history, scopes, args.last)
        if args.suggest_quarantine:
            suggested = flakes.suggest(history, found, args.threshold, entries, args.last)
            lifts = flakes.lifts(history, entries, scopes, args.lift_after)
            if args.json:
                data = {"quarantine": [s.as_entry() for s in suggested], "lift": [lift.as_json() for lift in lifts]}
                print(json.dumps(data, indent=2))
            else:
                sys.stdout.write(flakes.suggestions_yaml(suggested, lifts))
            return ExitCode.OK
    finally:
        history.close()
    if args.json:
        print(json.dumps([f.as_json() for f in found], indent=2))
        return ExitCode.OK
    if not found:
        print(f"no test both passed and failed in the last {args.last} run(s)")
        return ExitCode.OK
    print(f"{'test':<60} {'cell':<30} {'runs':>5} {'fail':>5} {'flaky':>5} {'flips':>6}  same source")
    for f in found:
        print(
            f"{f.test:<60} {f.cell:<30} {f.runs:>5} {f.failures:>5} {f.flaky:>5} {f.flip_rate:>6.2f}  "
            f"{'yes (strongest signal)' if f.same_source else 'no'}"
        )
    return ExitCode.OK


def cmd_schema(args: argparse.Namespace) -> int:
    from runner import schema

    sys.stdout.write(schema.results_schema_text())
    return ExitCode.OK


def cmd_cluster_up(args: argparse.Namespace) -> int:
    from runner import local_cluster

    options = local_cluster.UpOptions(
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        labels=tuple(args.label),
        head_cpus=args.head_cpus,
        port=args.port,
        dashboard_port=args.dashboard_port,
        host=args.host,
        own_engines=args.own_engines,
    )
    print(local_cluster.describe_up(local_cluster.up(options)))
    return ExitCode.OK


def cmd_cluster_status(args: argparse.Namespace) -> int:
    import ray

    from runner import cluster, local_cluster

    address = local_cluster.status_address(args.address)
    cluster.connect(address)
    try:
        nodes = local_cluster.status(timeout=args.timeout)
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps({"address": address, "nodes": [n.as_json() for n in nodes]}, indent=2))
    else:
        print(local_cluster.describe_status(address, nodes))
    return ExitCode.OK


def cmd_cluster_down(args: argparse.Namespace) -> int:
    from runner import local_cluster

    state, result = local_cluster.down()
    if state is None:
        print("matrix-run cluster down: no cluster recorded here; nothing to stop")
        return ExitCode.OK
    if result.remaining:
        pids = " ".join(str(p) for p in result.remaining)
        raise UserError(
            f"cluster down: {len(result.remaining)} process(es) of the cluster survived SIGKILL (pids {pids}); "
            "the state file is kept, run `matrix-run cluster down` again",
            ExitCode.INTERNAL,
        )
    jobs = f"{result.jobs} running job(s) and " if result.jobs else ""
    print(
        f"matrix-run cluster down: stopped {jobs}{result.stopped + result.killed} process(es) of the cluster at "
        f"{state.gcs_address} ({result.killed} needed SIGKILL); its state and token are removed"
    )
    return ExitCode.OK


def cmd_cluster_join(args: argparse.Namespace) -> int:
    from runner import local_cluster

    options = local_cluster.JoinOptions(
        address=args.address, labels=tuple(args.label), cpus=args.cpus, gpus=args.gpus, token_file=args.token_file
    )
    print(local_cluster.describe_join(local_cluster.join(options)))
    return ExitCode.OK


def cmd_attach(args: argparse.Namespace) -> int:
    from runner import jobs

    return jobs.attach(args.job_id, args.out, args.address, args.token_file, force=args.force)


def _add_cluster_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cl = sub.add_parser("cluster", help="start, inspect and stop a Ray cluster of matrix-run nodes")
    cl_sub = cl.add_subparsers(dest="cluster_command", required=True, parser_class=_Parser)
    up = cl_sub.add_parser("up", help="start a head and worker nodes on this machine (token auth on), then return")
    up.add_argument("--workers", type=int, default=1, help="worker nodes (default 1)")
    up.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default: this machine's, shared)")
    up.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (simulated without)")
    up.add_argument("--label", action="append", default=[], metavar="L", help="node label L (the resource runs-on:L)")
    up.add_argument("--head-cpus", type=float, help="CPUs of the head (default 0 with workers, else all)")
    up.add_argument("--port", type=int, default=6379, help="the GCS port (default 6379)")
    up.add_argument("--dashboard-port", type=int, default=8265, help="the dashboard and Jobs API port (default 8265)")
    up.add_argument("--host", default="127.0.0.1", help="address the nodes advertise and the Jobs API binds to")
    up.add_argument(
        "--own-engines",
        action="store_true",
        help="give each worker a Docker engine of its own (root; a second dockerd each), as separate machines have",
    )
    up.set_defaults(func=cmd_cluster_up)
    st = cl_sub.add_parser("status", help="the cluster's nodes, and the matrix-run images on each node")
    st.add_argument("--address", help="GCS address HOST:PORT (default: RAY_ADDRESS, else the cluster up's)")
    st.add_argument("--json", action="store_true", help="as JSON")
    st.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each node's answer")
    st.set_defaults(func=cmd_cluster_status)
    dn = cl_sub.add_parser("down", help="stop the processes that cluster up / join started on this machine")
    dn.set_defaults(func=cmd_cluster_down)
    jn = cl_sub.add_parser("join", help="start a worker node on this machine, joined to the cluster at ADDRESS")
    jn.add_argument("address", help="the head's GCS address HOST:PORT")
    jn.add_argument("--label", action="append", default=[], metavar="L", help="node label L (the resource runs-on:L)")
    jn.add_argument("--cpus", type=float, help="CPUs this node advertises (default: all of this machine's)")
    jn.add_argument("--gpus", type=float, default=0.0, help="GPUs this node advertises")
    jn.add_argument("--token-file", default="", help="the cluster's token (default: RAY_AUTH_TOKEN[_PATH])")
    jn.set_defaults(func=cmd_cluster_join)

    at = sub.add_parser("attach", help="follow a job of run --submit again, or collect its outputs")
    at.add_argument("job_id", help="the job id that run --submit printed")
    at.add_argument("--out", help="output folder (default .matrix-run/NAME)")
    at.add_argument("--address", help="the Jobs API URL (default: the cluster up's, RAY_API_SERVER_ADDRESS)")
    at.add_argument("--token-file", help="the cluster's token (default: RAY_AUTH_TOKEN, cluster up's)")
    at.add_argument("--force", action="store_true", help="use an --out folder holding files matrix-run did not write")
    at.set_defaults(func=cmd_attach)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's usage exit code (4) instead of argparse's 2 (which means interrupted)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="matrix-run", description="Run a pytest suite across a matrix of containers on Ray.")
    parser.add_argument("--version", action="version", version=f"matrix-run {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a matrix file end to end")
    run.add_argument("matrix", help="the matrix file (YAML)")
    run.add_argument("--out", help="output folder (default .matrix-run/NAME)")
    run.add_argument("--select", action="append", default=[], metavar="AXIS=VALUE", help="run only matching cells")
    run.add_argument(
        "--address",
        help="Ray cluster address (default: RAY_ADDRESS, else the cluster up's, else this machine without Ray); "
        "'local': this machine without Ray; 'embedded': a Ray of the run's own on this machine",
    )
    run.add_argument("--max-parallel", type=int, help="shards running at once (default: strategy.max-parallel)")
    run.add_argument("--shards", type=int, help="override tests.shards")
    run.add_argument("--retries", type=int, help="override retries.flaky")
    run.add_argument("--strict-flaky", action="store_true", help="flaky tests fail the run")
    run.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="cells that no node can serve (no_capacity) are listed but do not make the run exit 3",
    )
    ff = run.add_mutually_exclusive_group()
    ff.add_argument("--fail-fast", dest="fail_fast", action="store_true", default=None)
    ff.add_argument("--no-fail-fast", dest="fail_fast", action="store_false")
    run.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]", help="pass to test containers")
    run.add_argument("--dry-run", action="store_true", help="print cells and shards, run nothing")
    run.add_argument("--cache", action="store_true", help="skip cells whose inputs match a fully passing run")
    run.add_argument("--history", help="duration and result store (default .matrix-run/history.sqlite)")
    from runner import quarantine

    run.add_argument(
        "--quarantine",
        action="append",
        default=[],
        type=quarantine.load_file,
        metavar="FILE",
        help="quarantine entries (YAML list of {test, cells, reason}) added to the matrix file's quarantine:",
    )
    run.add_argument("--plain", action="store_true", default=None, help="plain log lines instead of a live view")
    run.add_argument(
        "--force", action="store_true", help="use an --out folder that holds files matrix-run did not write"
    )
    run.add_argument(
        "--submit",
        metavar="URL",
        help="run the coordinator as a Ray Job through the Jobs API at URL (http://HEAD:8265); outputs come to --out",
    )
    run.add_argument("--token-file", help="the cluster's token for --submit (default: RAY_AUTH_TOKEN, cluster up's)")
    run.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="print the expanded cells")
    ls.add_argument("matrix")
    ls.add_argument("--select", action="append", default=[], metavar="AXIS=VALUE")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    img = sub.add_parser("images", help="manage cell images")
    img_sub = img.add_subparsers(dest="images_command", required=True, parser_class=_Parser)
    boot = img_sub.add_parser("bootstrap", help="make a Debian base image without a registry (debootstrap)")
    boot.add_argument("suite", help="Debian suite: bullseye, bookworm, trixie, ...")
    boot.add_argument("--tag", help="image tag (default matrix-run/debian:SUITE)")
    boot.set_defaults(func=cmd_images_bootstrap)

    fl = sub.add_parser("flakes", help="tests that both passed and failed in recent runs (the flake ledger)")
    fl.add_argument("--matrix", metavar="FILE", help="only this matrix's runs (default: every matrix in the store)")
    fl.add_argument("--last", type=int, default=30, metavar="N", help="runs of each matrix to look at (default 30)")
    fl.add_argument("--json", action="store_true", help="a JSON list of objects (test, cell, runs, failures, ...)")
    fl.add_argument("--history", help="the history store (default .matrix-run/history.sqlite, MATRIX_RUN_HISTORY)")
    fl.add_argument(
        "--suggest-quarantine",
        action="store_true",
        help="print quarantine entries for tests over --threshold, and the entries ready to lift",
    )
    fl.add_argument("--threshold", type=float, default=0.2, help="flip rate that suggests quarantine (default 0.2)")
    fl.add_argument(
        "--lift-after",
        type=int,
        default=20,
        metavar="K",
        help="an entry whose tests passed in each of the last K runs is ready to lift (default 20)",
    )
    fl.add_argument(
        "--quarantine",
        action="append",
        default=[],
        type=quarantine.load_file,
        metavar="FILE",
        help="quarantine entries to check for lifting, besides the matrix file's",
    )
    fl.set_defaults(func=cmd_flakes)

    sch = sub.add_parser("schema", help="print the JSON Schema of an output file (results.json)")
    sch.add_argument("output", nargs="?", choices=["results"], default="results", help="which file (default results)")
    sch.set_defaults(func=cmd_schema)
    _add_cluster_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(sys.argv[1:] if argv is None else argv)  # --submit forwards the run's flags as written
    for flag in ("max_parallel", "shards", "retries"):
        value = getattr(args, flag, None)
        if value is not None and value < (1 if flag == "shards" else 0):
            parser.error(f"--{flag.replace('_', '-')} must be >= {1 if flag == 'shards' else 0}")
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"matrix-run: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("matrix-run: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # the broken stream must not be flushed at exit
        return int(ExitCode.OK)
    except Exception:  # a bug in matrix-run itself: its traceback, and the code for internal errors (not 1)
        traceback.print_exc()
        print("matrix-run: internal error (a bug in matrix-run; the traceback above says where)", file=sys.stderr)
        return int(ExitCode.INTERNAL)


if __name__ == "__main__":
    sys.exit(main())
