"""``matrix-run``: argument parsing and the run as a short pipeline of typed steps.

This is the only place that prints user errors and picks exit codes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runner import __version__, config, matrix, plan, source
from runner.errors import ExitCode, UserError

OWNED_OUTPUTS = ("junit.xml", "results.json", "summary.md", "report.html", "shards", "logs", "images")


@dataclass
class Planned:
    """Everything decided before Docker or Ray is touched: what ``--dry-run`` shows."""

    mf: config.MatrixFile
    cells: list[matrix.Cell]
    tree: source.SourceTree
    shards: dict[str, list[plan.Shard]]


def plan_run(matrix_path: str, select: Sequence[str], shards_override: int | None = None) -> Planned:
    mf = config.load(matrix_path)
    cells = matrix.expand(mf, select)
    tree = source.snapshot(mf.project)
    settings = plan.read_pytest_settings(mf.project)
    files = plan.discover(tree, mf.tests.paths, settings)
    if not files:
        where = ", ".join(mf.tests.paths or settings.testpaths or (".",))
        raise UserError(
            f"{mf.path}: tests.paths: no test files found under {where} in {mf.project} "
            f"(looked for {' '.join(settings.python_files)}); set tests.paths",
            ExitCode.NO_TESTS,
        )
    estimates = plan.estimate(tree, files)
    shards = {}
    for cell in cells:
        count = shards_override or mf.tests.shards
        if count == "auto":
            count = max(1, min(len(files), 4))
        shards[cell.id] = plan.plan_lpt(cell, estimates, int(count))
    return Planned(mf, cells, tree, shards)


def print_plan(planned: Planned) -> None:
    print(f"{planned.mf.name}: {len(planned.cells)} cell(s), project {planned.mf.project}")
    for cell in planned.cells:
        shards = planned.shards[cell.id]
        print(f"  {cell.id}  image base {cell.base}  {len(shards)} shard(s)")
        for s in shards:
            print(f"    {s.slug}  ~{s.predicted:.0f} units  {len(s.files)} file(s): {' '.join(s.files)}")


def _container_env(mf: config.MatrixFile, extra: Sequence[str]) -> tuple[tuple[str, str], ...]:
    env = dict(mf.tests.env)
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


def _prepare_out(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in OWNED_OUTPUTS:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def cmd_run(args: argparse.Namespace) -> int:
    from runner import engine, images, junit, summary
    from runner.coordinator import Coordinator, RunOptions
    from runner.progress import make_view

    planned = plan_run(args.matrix, args.select, args.shards)
    if args.dry_run:
        print_plan(planned)
        return ExitCode.OK
    mf = planned.mf
    env = _container_env(mf, args.env)
    client = engine.connect()
    specs = images.specs_for(mf, planned.cells, client)
    images.check_bases(client, specs)
    out = Path(args.out or Path(".matrix-run") / mf.name).resolve()
    _prepare_out(out)
    run_id = f"{mf.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    options = RunOptions(
        run_id=run_id,
        out=out,
        address=args.address,
        max_parallel=args.max_parallel if args.max_parallel is not None else mf.strategy.max_parallel,
        fail_fast=mf.strategy.fail_fast if args.fail_fast is None else args.fail_fast,
        flaky_retries=mf.retries.flaky if args.retries is None else args.retries,
        infra_retries=mf.retries.infra,
        env=env,
    )
    view = make_view(plain=args.plain)
    view.begin({c.id: len(planned.shards[c.id]) for c in planned.cells})
    view.note(f"run {run_id}: {len(planned.cells)} cell(s) -> {out}")
    try:
        results = Coordinator(mf, planned.cells, planned.shards, specs, planned.tree, options, view).run()
    finally:
        view.end()
    status, code = summary.run_status(results, strict_flaky=args.strict_flaky)
    junit.write_merged(results.cells, out / "junit.xml", mf.name)
    summary.write_results_json(results, out / "results.json", mf.name, status, code)
    summary.write_summary_md(results, out / "summary.md", mf.name, status)
    summary.write_report_html(results, out / "report.html", mf.name, status)
    summary.print_table(results, status)
    print(f"reports: {out}/junit.xml, results.json, summary.md, report.html")
    return code


def cmd_list(args: argparse.Namespace) -> int:
    mf = config.load(args.matrix)
    cells = matrix.expand(mf, args.select)
    if args.json:
        print(json.dumps([{"id": c.id, "axes": c.axes, "image": c.base} for c in cells], indent=2))
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
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    run.add_argument("--max-parallel", type=int, help="shards running at once (default: strategy.max-parallel)")
    run.add_argument("--shards", type=int, help="override tests.shards")
    run.add_argument("--retries", type=int, help="override retries.flaky")
    run.add_argument("--strict-flaky", action="store_true", help="flaky tests fail the run")
    ff = run.add_mutually_exclusive_group()
    ff.add_argument("--fail-fast", dest="fail_fast", action="store_true", default=None)
    ff.add_argument("--no-fail-fast", dest="fail_fast", action="store_false")
    run.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]", help="pass to test containers")
    run.add_argument("--dry-run", action="store_true", help="print cells and shards, run nothing")
    run.add_argument("--plain", action="store_true", default=None, help="plain log lines instead of a live view")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
