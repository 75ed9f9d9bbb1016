"""The hard / easy rule of difficulty filtering, as pure functions over per-scorer outcome counts.

m1: a question is hard iff EVERY scorer model is wrong (one sample each, temperature 0). The general rule:
hard iff the pass rate over all samples is at most ``max_pass_rate``. Either way a question whose scorer
requests failed after retries is undecided: a missing answer is never silently counted as wrong or right.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from curation.answers import extract_answer

Rule = Literal["all_wrong", "pass_rate"]
Decision = Literal["hard", "easy", "undecided"]
OUTCOMES = ("correct", "wrong", "invalid", "error")


@dataclass(frozen=True)
class Tally:
    """One scorer's samples for one question: how many were correct, wrong, invalid or failed."""

    correct: int = 0
    wrong: int = 0
    invalid: int = 0
    error: int = 0

    @property
    def samples(self) -> int:
        return self.correct + self.wrong + self.invalid + self.error

    @property
    def answered(self) -> int:
        """Samples with an answer to judge (an invalid answer is an answer, and not a correct one)."""
        return self.correct + self.wrong + self.invalid

    @property
    def pass_rate(self) -> float | None:
        return self.correct / self.answered if self.answered else None


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    rule: str
    pass_rate: float | None
    pass_rates: dict[str, float | None]


def decide(tallies: Mapping[str, Tally], rule: Rule = "all_wrong", max_pass_rate: float = 0.0) -> Verdict:
    """Decide hard / easy / undecided from each scorer's tally."""
    pass_rates = {name: t.pass_rate for name, t in sorted(tallies.items())}
    correct = sum(t.correct for t in tallies.values())
    answered = sum(t.answered for t in tallies.values())
    overall = correct / answered if answered else None
    if not tallies:
        return Verdict("undecided", f"{rule}: no scorer answered", overall, pass_rates)
    failed = sorted(name for name, t in tallies.items() if t.error)
    if failed:
        n = sum(tallies[name].error for name in failed)
        return Verdict(
            "undecided",
            f"{rule}: {n} request(s) failed after retries ({', '.join(failed)})",
            overall,
            pass_rates,
        )
    if rule == "all_wrong":
        right = sorted(name for name, t in tallies.items() if t.correct)
        if right:
            return Verdict("easy", f"all_wrong: correct by {', '.join(right)}", overall, pass_rates)
        return Verdict("hard", f"all_wrong: every scorer wrong ({len(tallies)} scorers)", overall, pass_rates)
    if rule == "pass_rate":
        assert overall is not None  # no errors and at least one tally: something was answered
        op = "<=" if overall <= max_pass_rate else ">"
        decision: Decision = "hard" if overall <= max_pass_rate else "easy"
        return Verdict(
            decision,
            f"pass_rate: {correct}/{answered} = {overall:.3f} {op} {max_pass_rate}",
            overall,
            pass_rates,
        )
    raise ValueError(f"unknown difficulty rule {rule!r}; known: all_wrong, pass_rate")


def pass_rates_json(pass_rates: Mapping[str, float | None]) -> str:
    return json.dumps(
        {k: (None if v is None else round(v, 6)) for k, v in pass_rates.items()}, sort_keys=True
    )


def judge_score(
    response: str | None, error: str | None, options: Mapping[str, str], answer_label: str
) -> tuple[str, str | None, str]:
    """One scorer sample -> (outcome, extracted label, how it was decided). Outcome: correct/wrong/invalid/error."""

    if error is not None:
        return "error", None, error
    if not response:
        return "invalid", None, "empty response"
    extracted = extract_answer(response, options)
    if extracted.label is None:
        return "invalid", None, extracted.reason
    outcome = "correct" if extracted.label == answer_label else "wrong"
    return outcome, extracted.label, extracted.reason
