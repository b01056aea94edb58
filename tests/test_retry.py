"""runner/retry.py: which tests run again after a shard attempt, one budget per failure class."""

from __future__ import annotations

import json

import pytest

from runner import results, retry
from runner.execution import ShardOutcome
from runner.results import Attempt

A = "tests/test_a.py::test_a"
B = "tests/test_a.py::test_b[1]"
C = "tests/test_c.py::test_c"
D = "tests/test_c.py::test_d"
E = "tests/test_c.py::test_e"


def record(nodeid: str, when: str, outcome: str = "passed") -> dict[str, object]:
    classname, name = results.junit_names(nodeid)
    rec: dict[str, object] = {"event": "test", "nodeid": nodeid, "when": when, "outcome": outcome, "duration": 0.1}
    rec.update(classname=classname, name=name, file=nodeid.split("::", maxsplit=1)[0])
    if outcome == "failed":
        rec["longrepr"] = "boom"
    return rec


def attempt(
    finished: dict[str, str],
    *,
    exit_code: int | None = 1,
    running: str | None = None,
    unstarted: tuple[str, ...] = (),
    collected: bool = True,
    timed_out: bool = False,
    infra_error: str = "",
) -> Attempt:
    """Evaluate a handmade shard attempt: ``finished`` maps node id -> passed/failed/error (report lines only)."""
    lines: list[dict[str, object]] = []
    if collected:
        lines.append({"event": "collected", "nodeids": [*finished, *([running] if running else []), *unstarted]})
    for nodeid, result in finished.items():
        if result == "error":
            lines += [record(nodeid, "setup", "failed"), record(nodeid, "teardown")]
        else:
            lines += [record(nodeid, "setup"), record(nodeid, "call", result), record(nodeid, "teardown")]
    if running:
        lines.append(record(running, "setup"))
    if collected:
        lines.insert(0, {"event": "start"})
        if exit_code is not None and not running and not timed_out and not infra_error:
            lines.append({"event": "end"})
    out = ShardOutcome(
        cell_id="python-3.11",
        shard="shard-1of2",
        attempt=1,
        exit_code=exit_code,
        report=b"".join(json.dumps(r).encode() + b"\n" for r in lines),
        timed_out=timed_out,
        infra_error=infra_error,
    )
    return results.evaluate(out, timeout=60)


# --- flaky --------------------------------------------------------------------------------------------------------


def test_flaky_reruns_only_failed_node_ids() -> None:
    att = attempt({A: "passed", B: "failed", C: "error", D: "passed"}, exit_code=1)
    budget = retry.Budget(flaky=2, infra=2)

    rerun = retry.decide(att, budget)

    assert rerun == retry.Rerun(select=(B, C), reasons=("flaky",))
    assert budget == retry.Budget(flaky=1, infra=2, timeout=1)


def test_flaky_budget_runs_out() -> None:
    budget = retry.Budget(flaky=2, infra=2)
    att = attempt({B: "failed"}, exit_code=1)

    reruns = [retry.decide(att, budget) for _ in range(3)]

    assert reruns == [retry.Rerun((B,), ("flaky",)), retry.Rerun((B,), ("flaky",)), None]
    assert budget.flaky == 0


def test_no_flaky_retries_configured() -> None:
    assert retry.decide(attempt({B: "failed"}), retry.Budget(flaky=0, infra=2)) is None


def test_all_passed_needs_no_rerun() -> None:
    budget = retry.Budget(flaky=2, infra=2)

    assert retry.decide(attempt({A: "passed", B: "passed"}, exit_code=0), budget) is None
    assert budget == retry.Budget(flaky=2, infra=2)


@pytest.mark.parametrize(("exit_code", "kind"), [(2, "error"), (250, "error"), (5, "no_tests")])
def test_errors_of_the_shard_are_not_retried(exit_code: int, kind: str) -> None:
    att = attempt({B: "failed"}, exit_code=exit_code)
    budget = retry.Budget(flaky=3, infra=3)

    assert att.kind == kind
    assert retry.decide(att, budget) is None
    assert budget == retry.Budget(flaky=3, infra=3)


# --- infra --------------------------------------------------------------------------------------------------------


def test_infra_reruns_unfinished_tests_including_the_running_one() -> None:
    att = attempt({A: "passed", B: "passed"}, exit_code=None, running=C, unstarted=(D, E))
    budget = retry.Budget(flaky=0, infra=2)

    rerun = retry.decide(att, budget)

    assert att.kind == "infra"
    assert rerun == retry.Rerun(select=(C, D, E), reasons=("infra",))
    assert budget.infra == 1


def test_infra_and_flaky_in_one_attempt_spend_both_budgets() -> None:
    att = attempt({A: "failed", B: "passed"}, infra_error="docker: connection reset", running=C, unstarted=(D,))
    budget = retry.Budget(flaky=1, infra=1)

    rerun = retry.decide(att, budget)

    assert rerun == retry.Rerun(select=(C, D, A), reasons=("infra", "flaky"))
    assert budget == retry.Budget(flaky=0, infra=0, timeout=1)


def test_infra_with_nothing_reported_reruns_the_whole_shard() -> None:
    att = attempt({}, exit_code=None, collected=False, infra_error="image build hiccup")
    budget = retry.Budget(flaky=2, infra=2)

    assert retry.decide(att, budget) == retry.Rerun(select=(), reasons=("infra",))
    assert budget.infra == 1


def test_infra_with_nothing_reported_repeats_the_previous_selection() -> None:
    att = attempt({}, exit_code=137, collected=False)

    rerun = retry.decide(att, retry.Budget(flaky=0, infra=1), previous_select=(B, C))

    assert rerun == retry.Rerun(select=(B, C), reasons=("infra",))


def test_infra_budget_runs_out() -> None:
    att = attempt({A: "passed"}, exit_code=None, running=B)
    budget = retry.Budget(flaky=2, infra=1)

    assert retry.decide(att, budget) == retry.Rerun((B,), ("infra",))
    assert retry.decide(att, budget) is None
    assert budget.infra == 0


def test_infra_whole_shard_budget_runs_out() -> None:
    att = attempt({}, exit_code=None, collected=False, infra_error="node lost")
    budget = retry.Budget(flaky=2, infra=0)

    assert retry.decide(att, budget) is None
    assert budget == retry.Budget(flaky=2, infra=0)


# --- timeout ------------------------------------------------------------------------------------------------------


def test_timeout_reruns_not_yet_started_tests_once() -> None:
    att = attempt({A: "passed", B: "failed"}, exit_code=137, running=C, unstarted=(D, E), timed_out=True)
    budget = retry.Budget(flaky=0, infra=2)

    first = retry.decide(att, budget)
    second = retry.decide(att, budget)

    assert att.kind == "timeout"
    assert first == retry.Rerun(select=(D, E), reasons=("timeout",))  # C timed out: it is not run again
    assert second is None
    assert budget == retry.Budget(flaky=0, infra=2, timeout=0)


def test_timeout_case_is_not_rerun_as_flaky() -> None:
    att = attempt({B: "failed"}, exit_code=137, running=C, timed_out=True)
    budget = retry.Budget(flaky=2, infra=2)

    rerun = retry.decide(att, budget)

    assert [c.nodeid for c in att.cases if c.status is results.Status.TIMEOUT] == [C]
    assert rerun == retry.Rerun(select=(B,), reasons=("flaky",))


def test_timeout_with_everything_started_reruns_nothing() -> None:
    att = attempt({A: "passed"}, exit_code=137, running=B, timed_out=True)

    assert retry.decide(att, retry.Budget(flaky=2, infra=2)) is None
