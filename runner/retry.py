"""Which tests to run again after a shard attempt, and when to stop.

One budget per failure class and shard, so retries never multiply:
- ``flaky``: tests that failed are rerun by node id, ``retries.flaky`` times at most;
- ``infra``: the tests that had not finished when the environment broke are rerun, ``retries.infra`` times
  (the whole shard only when it broke before pytest reported anything);
- ``timeout``: the tests that had not started when the shard hit its time limit are rerun once.
Node and worker loss is Ray's layer (its task ``max_retries``), not this one.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.results import BAD, Attempt, Status


@dataclass
class Budget:
    flaky: int
    infra: int
    timeout: int = 1


@dataclass(frozen=True)
class Rerun:
    select: tuple[str, ...]  # node ids; empty means the same request again (the shard broke before reporting)
    reasons: tuple[str, ...]


def decide(att: Attempt, budget: Budget, previous_select: tuple[str, ...] = ()) -> Rerun | None:
    """The rerun that follows this attempt, if any; spends the budgets it uses."""
    select: list[str] = []
    reasons: list[str] = []
    if att.kind in ("infra", "timeout"):
        if att.kind == "infra" and not att.collected and not att.finished:
            if budget.infra <= 0:
                return None
            budget.infra -= 1
            return Rerun(previous_select, ("infra",))
        remaining = [n for n in att.collected if n not in att.finished and n != att.running]
        if att.kind == "infra" and att.running is not None:
            remaining.insert(0, att.running)  # a killed test is the environment's fault, not the test's
        if remaining:
            left = budget.infra if att.kind == "infra" else budget.timeout
            if left > 0:
                if att.kind == "infra":
                    budget.infra -= 1
                else:
                    budget.timeout -= 1
                select.extend(remaining)
                reasons.append(att.kind)
    if att.kind in ("ok", "infra", "timeout") and budget.flaky > 0:
        failed = [c.nodeid for c in att.cases if c.status in BAD - {Status.TIMEOUT} and c.nodeid]
        if failed:
            budget.flaky -= 1
            select.extend(n for n in failed if n not in select)
            reasons.append("flaky")
    if not select:
        return None
    return Rerun(tuple(select), tuple(reasons))
