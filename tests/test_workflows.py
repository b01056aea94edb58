"""The project's own CI files: .github/workflows/ci.yml and nightly.yml, and .github/dependabot.yml, checked against
the schemas check-jsonschema ships (SchemaStore's, vendored in the package: no network), plus what each must do, and
matrices/ci.yaml, the reduced matrix that ci.yml runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, run_cli

WORKFLOWS = ROOT / ".github" / "workflows"
CI = WORKFLOWS / "ci.yml"
NIGHTLY = WORKFLOWS / "nightly.yml"
DEPENDABOT = ROOT / ".github" / "dependabot.yml"


def check(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def triggers(workflow: dict[Any, Any]) -> dict[str, Any]:
    return workflow.get("on", workflow.get(True))  # type: ignore[no-any-return]  # YAML 1.1 reads `on` as true


def runs(workflow: dict[Any, Any]) -> list[str]:
    return [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]


def uses(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]


# --- valid files ----------------------------------------------------------------------------------------------------


def test_the_workflows_are_valid_github_workflows() -> None:
    proc = check("vendor.github-workflows", CI, NIGHTLY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok -- validation done" in proc.stdout


def test_dependabot_yml_is_a_valid_dependabot_config() -> None:
    proc = check("vendor.dependabot", DEPENDABOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("a job without runs-on", lambda w: w["jobs"]["tests"].pop("runs-on")),
        ("a step with both run and uses", lambda w: w["jobs"]["tests"]["steps"][1].update(uses="actions/x@v1")),
        ("an unknown trigger", lambda w: w.update({"on": {"pull_requests": None}})),
    ],
)
def test_the_schema_rejects_a_broken_workflow(tmp_path: Path, what: str, change: Any) -> None:
    workflow = load(CI)
    workflow["on"] = triggers(workflow)
    workflow.pop(True, None)
    change(workflow)
    broken = tmp_path / "broken.yml"
    broken.write_text(json.dumps(workflow))
    assert check("vendor.github-workflows", broken).returncode == 1, what


# --- what they do ---------------------------------------------------------------------------------------------------


def test_ci_runs_the_test_suite_and_the_reduced_matrix_on_pull_requests_and_main() -> None:
    workflow = load(CI)
    on = triggers(workflow)
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]
    commands = runs(workflow)
    assert any("scripts/test.sh" in c for c in commands)  # the README's test command
    [matrix_run] = [c for c in commands if "matrix-run run" in c]
    assert "matrices/ci.yaml" in matrix_run
    out = re.search(r"--out (\S+)", matrix_run)
    assert out is not None
    [upload] = [s for s in uses(workflow) if s["uses"].startswith("actions/upload-artifact@")]
    assert upload["with"]["path"].rstrip("/") == out.group(1)  # the output folder is kept
    assert upload["if"] == "${{ !cancelled() }}"  # a failed run's reports are kept too


def test_nightly_runs_the_full_matrix_on_the_cluster_from_a_secret() -> None:
    workflow = load(NIGHTLY)
    on = triggers(workflow)
    assert "workflow_dispatch" in on
    [cron] = [s["cron"] for s in on["schedule"]]
    assert len(cron.split()) == 5
    [matrix_run] = [c for c in runs(workflow) if "matrix-run run" in c]
    assert "matrices/example.yaml" in matrix_run
    assert '--address "${{ secrets.RAY_ADDRESS }}"' in matrix_run
    assert "--submit replaces --address" in NIGHTLY.read_text()
    assert any("matrix-run flakes" in c for c in runs(workflow))


def test_dependabot_updates_pip_and_actions_weekly() -> None:
    updates = load(DEPENDABOT)["updates"]
    assert {(u["package-ecosystem"], u["schedule"]["interval"]) for u in updates} == {
        ("pip", "weekly"),
        ("github-actions", "weekly"),
    }


def test_every_file_the_workflows_run_is_in_the_repository() -> None:
    named = set()
    for path in (CI, NIGHTLY):
        for command in runs(load(path)):
            named |= set(re.findall(r"(?:scripts|matrices)/[\w.-]+", command))
    assert named >= {"scripts/test.sh", "scripts/setup.sh", "matrices/ci.yaml", "matrices/example.yaml"}
    assert all((ROOT / n).is_file() for n in named), sorted(n for n in named if not (ROOT / n).is_file())


# --- matrices/ci.yaml -----------------------------------------------------------------------------------------------


def test_the_ci_matrix_loads_and_is_a_part_of_the_example_matrix() -> None:
    ci = run_cli("list", "matrices/ci.yaml", "--json")
    assert ci.returncode == 0, ci.stderr
    example = run_cli("list", "matrices/example.yaml", "--json")
    assert example.returncode == 0, example.stderr
    ci_cells = {json.dumps(c["axes"], sort_keys=True): c["image"] for c in json.loads(ci.stdout)}
    full = {json.dumps(c["axes"], sort_keys=True): c["image"] for c in json.loads(example.stdout)}
    assert len(ci_cells) == 2
    assert ci_cells.items() <= full.items()  # the same environments as the nightly's: the same images
    text = run_cli("list", "matrices/ci.yaml")
    assert text.stdout.splitlines() == [
        "python-3.9_numpy-1.26.4_debian-bullseye\tpython=3.9 numpy=1.26.4 debian=bullseye",
        "python-3.13_numpy-2.2.6_debian-trixie\tpython=3.13 numpy=2.2.6 debian=trixie",
    ]


def test_the_ci_matrix_plans(tmp_path: Path) -> None:
    proc = run_cli("run", "matrices/ci.yaml", "--dry-run", "--history", str(tmp_path / "h.sqlite"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ci: 2 cell(s), project ")
    assert proc.stdout.count("shard-2of2") == 2
