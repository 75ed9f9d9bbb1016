"""m1's thinking-budget protocol as pure functions over token ids (checked against the paper, tested directly).

m1 (REFERENCE "Evaluation with a thinking budget"):

1. prompt = chat template(user: question + options + ``Return your final response within \\boxed{}.``), then the
   think marker ``<|im_start|>think`` and a newline;
2. generate up to BUDGET tokens, stopping at ``<|im_end|>`` or ``<|im_start|>``;
3. append a newline if the thinking does not end with one; then ``<|im_start|>answer`` + newline + ``Final Answer:``
   if the budget ran out, else ``<|im_start|>answer``;
4. generate the answer (at most 1,024 tokens).

Budget forcing: when thinking stops early, append ``Wait`` and continue, N times.

Accounting here (m1 computed the remaining budget from the minimum over the batch, so samples overran theirs):

- THINKING TOKENS are the token ids between the think line and the answer stage: every generated token plus
  every forced ``Wait`` token, minus the stop token that ended a segment (it is dropped, as m1 drops it from the
  text). For each sample, its own thinking tokens never exceed its own budget.
- The budget RAN OUT iff the thinking holds exactly ``budget`` tokens (the last segment ended on its length
  limit; a budget of 0 has run out at once: the "no thinking" baseline).
- A ``Wait`` is forced only after an early stop, at most N times, and only if the whole word fits in the
  remaining budget (a forced word is never cut); otherwise the thinking ends there.

Prefix reuse: with greedy decoding, the thinking for budget b is what the thinking for a larger budget B holds up
to b tokens, with the same forcing decisions replayed (:func:`derive`), so one generation of B's thinking serves
every smaller budget; only the answers are generated per budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

M1_INSTRUCTION = "Return your final response within \\boxed{}."


@dataclass(frozen=True)
class Protocol:
    """The text side of the protocol: markers, stops, the forcing word and the answer limit (configurable)."""

    think_marker: str = "<|im_start|>think"
    answer_marker: str = "<|im_start|>answer"
    final_answer: str = "Final Answer:"
    stop: tuple[str, ...] = ("<|im_end|>", "<|im_start|>")
    wait_word: str = "Wait"
    instruction: str = M1_INSTRUCTION
    answer_max_tokens: int = 1024


@dataclass(frozen=True)
class TokenProtocol:
    """The protocol in one tokenizer's ids (markers tokenized without special-token additions)."""

    think: tuple[int, ...]  # think marker + "\n"
    newline: tuple[int, ...]
    answer: tuple[int, ...]  # answer marker (budget not exhausted)
    answer_final: tuple[int, ...]  # answer marker + "\n" + "Final Answer:" (budget exhausted)
    wait: tuple[int, ...]
    stop_ids: frozenset[int]
    newline_ending: frozenset[int]  # ids whose decoded text ends with "\n"
    answer_max_tokens: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, protocol: Protocol) -> TokenProtocol:
        """Tokenize the markers with ``tokenizer`` (a transformers tokenizer). Stops must be single tokens."""

        def enc(text: str) -> tuple[int, ...]:
            return tuple(tokenizer.encode(text, add_special_tokens=False))

        stop_ids = set()
        for stop in protocol.stop:
            ids = enc(stop)
            if len(ids) != 1:
                raise ValueError(
                    f"stop string {stop!r} is {len(ids)} tokens {list(ids)} in this tokenizer; the budget protocol "
                    "needs stops that are single tokens (special tokens such as <|im_end|>)"
                )
            stop_ids.add(ids[0])
        if tokenizer.eos_token_id is not None:
            stop_ids.add(int(tokenizer.eos_token_id))
        if not enc(protocol.wait_word):
            raise ValueError("the forcing word is empty")
        vocab = len(tokenizer)
        decoded = tokenizer.batch_decode([[i] for i in range(vocab)], skip_special_tokens=False)
        ending = frozenset(i for i, text in enumerate(decoded) if text.endswith("\n"))
        return cls(
            think=enc(protocol.think_marker + "\n"),
            newline=enc("\n"),
            answer=enc(protocol.answer_marker),
            answer_final=enc(protocol.answer_marker + "\n" + protocol.final_answer),
            wait=enc(protocol.wait_word),
            stop_ids=frozenset(stop_ids),
            newline_ending=ending,
            answer_max_tokens=protocol.answer_max_tokens,
        )


# ----------------------------------------------------------------------------------------------- prompts
def question_text(question: str, options: Mapping[str, str], instruction: str = M1_INSTRUCTION) -> str:
    """m1's user message: the question, one ``X. text`` line per option, then the instruction."""
    lines = [question.rstrip(), *(f"{label}. {text}" for label, text in options.items())]
    body = "\n".join(lines)
    return f"{body}\n{instruction}" if instruction else body


def chat_prompt(tokenizer: Any, user_text: str, system: str | None = None) -> str:
    """The model's chat template around one user turn, with the assistant turn opened."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_text}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------- thinking
@dataclass(frozen=True)
class Thinking:
    """One sample's thinking under one budget: its tokens, where ``Wait`` was forced, and how it ended."""

    budget: int
    forcing: int  # N: how many times a Wait may be forced
    ids: tuple[int, ...] = ()
    forced_at: tuple[int, ...] = ()  # positions in ``ids`` where a forced word starts
    ran_out: bool = False
    done: bool = False
    generated: int = 0  # tokens the model generated for this thinking (stop tokens included)
    calls: int = 0  # generation calls it took

    def __post_init__(self) -> None:
        if self.budget < 0 or self.forcing < 0:
            raise ValueError(f"budget ({self.budget}) and forcing ({self.forcing}) must be >= 0")

    @property
    def remaining(self) -> int:
        return self.budget - len(self.ids)

    @property
    def forced(self) -> int:
        return len(self.forced_at)

    @property
    def tokens(self) -> int:
        return len(self.ids)


def start(budget: int, forcing: int) -> Thinking:
    """A fresh thinking; a zero budget has run out before it starts (the "no thinking" baseline)."""
    if budget == 0:
        return Thinking(budget, forcing, ran_out=True, done=True)
    return Thinking(budget, forcing)


def absorb(state: Thinking, new_ids: Sequence[int], tp: TokenProtocol) -> Thinking:
    """The state after one generation segment (``max_tokens = state.remaining``) produced ``new_ids``.

    The segment stopped early iff its last token is a stop id (dropped) and the thinking has budget left."""
    if state.done:
        raise ValueError("absorb() on a finished thinking")
    new = list(new_ids)
    generated = len(new)
    stopped = bool(new) and new[-1] in tp.stop_ids
    if stopped:
        new = new[:-1]
    if len(new) > state.remaining:
        raise ValueError(f"segment of {len(new)} tokens exceeds the remaining budget {state.remaining}")
    ids = state.ids + tuple(new)
    state = replace(state, ids=ids, generated=state.generated + generated, calls=state.calls + 1)
    if len(ids) == state.budget:
        return replace(state, ran_out=True, done=True)
    if not stopped and generated:  # the engine ended the segment for another reason: treat as out of budget
        raise ValueError("a segment ended without a stop token before its max_tokens")
    if state.forced < state.forcing and len(tp.wait) <= state.remaining:
        forced = replace(state, ids=ids + tp.wait, forced_at=state.forced_at + (len(ids),))
        # the word filled the budget exactly: nothing is left to think with, so the budget ran out
        return replace(forced, ran_out=True, done=True) if forced.remaining == 0 else forced
    return replace(state, done=True)


def derive(full: Thinking, budget: int, tp: TokenProtocol) -> Thinking:
    """The thinking ``budget`` would have produced, read off a finished thinking with a budget >= ``budget``.

    Exact under greedy decoding: replays the forcing decisions (a Wait only if it fits in ``budget``)."""
    if not full.done:
        raise ValueError("derive() needs a finished thinking")
    if budget > full.budget:
        raise ValueError(f"cannot derive budget {budget} from a thinking with budget {full.budget}")
    if budget == 0:
        return start(0, full.forcing)
    forced: list[int] = []
    for pos in full.forced_at:
        if pos >= budget:
            break
        if (
            pos + len(tp.wait) > budget
        ):  # the model stopped at pos; budget's Wait would not fit: it ends there
            return Thinking(budget, full.forcing, full.ids[:pos], tuple(forced), ran_out=False, done=True)
        forced.append(pos)
    if len(full.ids) >= budget:
        return Thinking(budget, full.forcing, full.ids[:budget], tuple(forced), ran_out=True, done=True)
    return Thinking(budget, full.forcing, full.ids, tuple(forced), ran_out=False, done=True)


def answer_suffix(state: Thinking, tp: TokenProtocol) -> tuple[int, ...]:
    """Tokens appended after the thinking: a newline if missing, the answer marker, and ``Final Answer:``
    exactly when the budget ran out."""
    if not state.done:
        raise ValueError("answer_suffix() needs a finished thinking")
    # m1 checks the end of the text so far: with no thinking that is the think line, which ends in a newline.
    last = state.ids[-1] if state.ids else (tp.think[-1] if tp.think else None)
    newline = () if last in tp.newline_ending else tp.newline
    return newline + (tp.answer_final if state.ran_out else tp.answer)


def thinking_prompt(prompt_ids: Sequence[int], state: Thinking, tp: TokenProtocol) -> list[int]:
    """The prompt of the next thinking segment: chat prompt, think line, the thinking so far."""
    return [*prompt_ids, *tp.think, *state.ids]


def answer_prompt(prompt_ids: Sequence[int], state: Thinking, tp: TokenProtocol) -> list[int]:
    """The prompt of the answer stage."""
    return [*prompt_ids, *tp.think, *state.ids, *answer_suffix(state, tp)]


# --------------------------------------------------------------------------------------------- sweep plan
@dataclass(frozen=True)
class SweepPlan:
    """Which thinkings to generate for a set of budgets: one per budget, or only the largest (prefix reuse)."""

    generate: tuple[int, ...]
    derived: dict[int, int] = field(default_factory=dict)  # budget -> the generated budget it is derived from


def plan_budgets(budgets: Iterable[int], *, prefix_reuse: bool) -> SweepPlan:
    """Prefix reuse generates only the largest budget's thinking; every other budget is derived from it."""
    wanted = sorted(set(budgets))
    if any(b < 0 for b in wanted):
        raise ValueError(f"budgets must be >= 0, got {wanted}")
    if not wanted:
        return SweepPlan(())
    if not prefix_reuse:
        return SweepPlan(tuple(wanted))
    largest = wanted[-1]
    return SweepPlan((largest,), {b: largest for b in wanted[:-1]})
