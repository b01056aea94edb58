"""runner/results.schema.json: the results.json contract (JSON Schema draft 2020-12), its version, ``matrix-run
schema``, and ``validate_results``, which the tests that run matrix-run use on every results.json they read."""

from __future__ import annotations

import copy
import functools
import json
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from runner import cli, junit, schema, summary
from runner import results as outcomes
from runner.coverage_merge import CoverageSummary
from runner.execution import RunResults, ShardOutcome
from runner.results import CellResult, Status, parse_junit
from tests.conftest import ROOT
from tests.test_junit import PASS, SKIP, cell_result, mixed_cell, shard_outcome, timeout_cell


def closed(node: object) -> object:
    """The schema with every object it describes closed to the fields it describes. The shipped schema lets readers
    meet fields a later release adds; matrix-run's own output must not hold a field its schema does not describe."""
    if isinstance(node, dict):
        out = {key: closed(value) for key, value in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [closed(value) for value in node]
    return node


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(closed(schema.results_schema()))


def problems(data: object) -> list[str]:
    """Where ``data`` departs from the closed schema, one line each ("" when it matches)."""
    found = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message[:300]}" for e in found]


def validate_results(path: Path) -> dict:  # type: ignore[type-arg]
    """The results.json at ``path``, parsed, once it has been checked against runner/results.schema.json (closed:
    every field described). Fails the calling test with every departure."""
    data = json.loads(path.read_text(encoding="utf-8"))
    found = problems(data)
    assert not found, f"{path} does not match runner/results.schema.json:\n" + "\n".join(found[:20])
    return data  # type: ignore[no-any-return]


# --- handmade runs ------------------------------------------------------------------------------------------------


def _cell(cell_id: str, shards: list[ShardOutcome]) -> CellResult:
    return cell_result(cell_id, {"python": cell_id.split("-", 1)[1]}, shards)


def every_kind_of_cell() -> list[CellResult]:
    passed = _cell("py-3.9", [shard_outcome({PASS: "passed", SKIP: "skipped"}, node="n1", gpu_ids=("0", "1"))])
    flaky = _cell(
        "py-3.10", [shard_outcome({PASS: "passed", "t.py::f": "failed"}), shard_outcome({"t.py::f": "passed"}, 2)]
    )
    infra = _cell(
        "py-3.12",
        [ShardOutcome("c", "shard-1of1", n, None, infra_error="Docker API: 500 Server Error") for n in (1, 2)],
    )
    no_tests = _cell("py-3.14", [ShardOutcome("c", "shard-1of1", 1, 5, report=b'{"event": "start"}\n')])
    suite = ET.tostring(junit.suite_element(passed))
    cached = CellResult(
        "py-3.8", {"python": "3.8"}, Status.CACHED, "inputs unchanged since a fully passing run",
        {c.key: outcomes.TestHistory(c) for c in parse_junit(suite)}, [], 0.0,
    )  # fmt: skip
    error = CellResult("py-3.7", {"python": "3.7"}, Status.ERROR, "image build failed: pip exited 1", {}, [], 3.0)
    cancelled = CellResult("py-3.6", {"python": "3.6"}, Status.CANCELLED, "cancelled by fail-fast", {}, [], 0.0)
    unservable = CellResult("py-3.5", {"python": "3.5"}, Status.NO_CAPACITY, "no node has the label gpu", {}, [], 0.0)
    return [passed, flaky, mixed_cell(), timeout_cell(), infra, no_tests, cached, error, cancelled, unservable]


def write(results: RunResults, path: Path, coverage: CoverageSummary | None = None) -> Path:
    status, code = summary.run_status(results)
    summary.write_results_json(results, path, "demo", status, code, coverage)
    return path


def full_run() -> RunResults:
    return RunResults(
        "demo-20250101-000000-abcdef",
        every_kind_of_cell(),
        interrupted=False,
        cancelled=True,
        duration=61.5,
        images_built=2,
        images_reused=5,
        image_check_seconds=0.25,
        fail_fast_by="python-3.11_numpy-2.2.6",
        cluster_lost="the embedded Ray's processes were killed",
    )


# --- the schema ---------------------------------------------------------------------------------------------------


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    shipped = schema.results_schema()
    assert shipped["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(shipped)
    jsonschema.Draft202012Validator.check_schema(closed(shipped))  # type: ignore[arg-type]


def test_the_schema_version_is_the_one_results_json_says() -> None:
    shipped = schema.results_schema()
    assert summary.SCHEMA_VERSION == 2
    assert shipped["$id"] == f"urn:matrix-run:results:{summary.SCHEMA_VERSION}"
    assert shipped["properties"]["schema"] == {  # type: ignore[index]
        "const": summary.SCHEMA_VERSION,
        "description": "The version of this contract (matches the end of $id).",
    }


def test_the_schema_ships_with_the_package() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["runner"]
    assert schema.RESULTS_SCHEMA in data
    assert (ROOT / "runner" / schema.RESULTS_SCHEMA).read_text() == schema.results_schema_text()


def test_matrix_run_schema_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    out = capsys.readouterr().out
    assert out == schema.results_schema_text()
    assert json.loads(out) == schema.results_schema()
    assert cli.main(["schema", "results"]) == 0
    assert capsys.readouterr().out == out


# --- what write_results_json writes -------------------------------------------------------------------------------


def test_a_run_with_every_kind_of_cell_validates(tmp_path: Path) -> None:
    coverage = CoverageSummary(percent=87.5, files=12, shards=9)
    data = validate_results(write(full_run(), tmp_path / "results.json", coverage))
    assert data["schema"] == 2
    assert data["status"] == "infra"
    assert data["exit_code"] == 3
    assert data["fail_fast_by"] == "python-3.11_numpy-2.2.6"
    assert data["coverage"]["percent"] == 87.5
    statuses = {c["id"]: c["status"] for c in data["cells"]}
    assert set(statuses.values()) == {str(s) for s in Status} - {"skipped"}  # every status a cell can have
    shard = next(c for c in data["cells"] if c["id"] == "py-3.9")["shards"][0]
    assert shard["gpu_ids"] == ["0", "1"]
    assert shard["node"] == "n1"
    assert {"session", "wall", "duration"} <= shard.keys()
    infra = next(c for c in data["cells"] if c["id"] == "py-3.12")["shards"]
    assert [s["exit_code"] for s in infra] == [None, None]


def test_a_minimal_run_validates(tmp_path: Path) -> None:
    data = validate_results(write(RunResults("r", [], False, False, 0.0, 0, 0), tmp_path / "results.json"))
    assert data["cells"] == []
    assert "coverage" not in data


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("a count as text", lambda d: d["cells"][0].update(tests="3")),
        ("an exit code as text", lambda d: d.update(exit_code="1")),
        ("an exit code pytest does not have", lambda d: d.update(exit_code=7)),
        ("another version", lambda d: d.update(schema=1)),
        ("an unknown cell status", lambda d: d["cells"][0].update(status="green")),
        ("a shard's exit code as text", lambda d: d["cells"][0]["shards"][0].update(exit_code="0")),
        ("a negative duration", lambda d: d["cells"][0].update(duration=-1.0)),
        ("a missing field", lambda d: d.pop("cluster_lost")),
        ("a missing shard field", lambda d: d["cells"][0]["shards"][0].pop("session")),
        ("an axis value as a number", lambda d: d["cells"][0]["axes"].update(python=3.9)),
        ("a field the schema does not describe", lambda d: d["cells"][0].update(colour="red")),
    ],
)
def test_what_departs_from_the_schema_fails(tmp_path: Path, where: str, change) -> None:  # type: ignore[no-untyped-def]
    path = write(full_run(), tmp_path / "results.json")
    data = json.loads(path.read_text())
    assert not problems(data)
    bad = copy.deepcopy(data)
    change(bad)
    assert problems(bad), where
    path.write_text(json.dumps(bad))
    with pytest.raises(AssertionError, match=r"does not match runner/results\.schema\.json"):
        validate_results(path)


def test_readers_of_the_shipped_schema_accept_fields_a_later_release_adds(tmp_path: Path) -> None:
    data = json.loads(write(full_run(), tmp_path / "results.json").read_text())
    data["cells"][0]["colour"] = "red"
    data["new_top_level_field"] = {"any": "thing"}
    jsonschema.Draft202012Validator(schema.results_schema()).validate(data)
