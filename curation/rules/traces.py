"""Rules of the teacher stage: what a teacher attempt's outcome is, and m1's SFT text.

m1 kept a trace iff its answer named the key; it stored no finish_reason and accepted strings by their first
character. Here a trace is accepted iff the answer extracted by :mod:`curation.answers` equals the key AND the
response finished normally: a truncated (``length``) or filtered trace is never accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from curation.answers import extract_answer, strip_think

THINK_MARKER = "<|im_start|>think"
ANSWER_MARKER = "<|im_start|>answer"
# Qwen2.5's chat template adds this system turn when a conversation has none; m1's `text` field carries it.
QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@dataclass(frozen=True)
class Judgement:
    outcome: str  # correct | wrong | invalid | no_reasoning | truncated | filtered | error
    label: str | None
    how: str

    @property
    def accepted(self) -> bool:
        return self.outcome == "correct"


def split_reasoning(text: str | None, reasoning: str | None) -> tuple[str | None, str | None]:
    """(reasoning, answer) of a teacher response: R1's ``reasoning_content`` + content, or a ``<think>`` text."""
    if reasoning:
        return reasoning, text
    if text is None:
        return None, None

    return strip_think(text)


def judge_attempt(
    answer: str | None,
    *,
    reasoning: str | None,
    finish_reason: str | None,
    error: str | None,
    options: Mapping[str, str],
    answer_label: str,
) -> Judgement:
    """One teacher attempt -> its outcome. Only a complete answer naming the key, with reasoning, is ``correct``.

    ``reasoning=None`` means the response carried no reasoning at all (no ``reasoning_content``, no think
    block): such a trace has nothing to distil, so it is ``no_reasoning`` even when its answer is right.
    """

    if error is not None:
        return Judgement("error", None, error)
    if finish_reason == "length":
        return Judgement("truncated", None, "finish_reason length: the trace was cut at max_tokens")
    if finish_reason == "content_filter":
        return Judgement("filtered", None, "finish_reason content_filter")
    if not answer or not answer.strip():
        return Judgement("invalid", None, "empty answer")
    extracted = extract_answer(answer, options)
    if extracted.label is None:
        return Judgement("invalid", None, extracted.reason)
    if extracted.label != answer_label:
        return Judgement("wrong", extracted.label, extracted.reason)
    if reasoning is None or not reasoning.strip():
        return Judgement("no_reasoning", extracted.label, "correct answer but no reasoning to distil")
    return Judgement("correct", extracted.label, extracted.reason)


def assistant_text(reasoning: str, answer: str) -> str:
    """m1's assistant turn: think marker, the reasoning, answer marker, ``Answer: `` and the answer."""
    return f"{THINK_MARKER}\n{reasoning.strip()}\n{ANSWER_MARKER}\nAnswer: {answer.strip()}"


def sft_text(prompt: str, reasoning: str, answer: str, *, system: str | None = QWEN_DEFAULT_SYSTEM) -> str:
    """m1's `text` field: the whole example in Qwen2.5's chat format (what m1's SFT trained on)."""
    system_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return (
        f"{system_turn}<|im_start|>user\n{prompt}<|im_end|>\n"
        f"<|im_start|>assistant\n{assistant_text(reasoning, answer)}<|im_end|>"
    )
