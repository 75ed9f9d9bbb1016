"""evaluation.budget: m1's budget protocol as pure functions (accounting, forcing, answer suffix, prefix reuse)."""

from __future__ import annotations

import random

import pytest

from evaluation.budget import (
    Protocol,
    Thinking,
    TokenProtocol,
    absorb,
    answer_prompt,
    answer_suffix,
    derive,
    plan_budgets,
    question_text,
    start,
    thinking_prompt,
)

STOP, NL = 2, 10
TP = TokenProtocol(
    think=(1, 50, NL),
    newline=(NL,),
    answer=(1, 60),
    answer_final=(1, 60, NL, 70, 71),
    wait=(80, 81),  # a two-token forcing word, so "does it fit" matters
    stop_ids=frozenset({STOP, 1}),
    newline_ending=frozenset({NL, 11}),
    answer_max_tokens=16,
)


def run(budget: int, forcing: int, script: list[list[int]]) -> Thinking:
    """Drive a thinking with a scripted model: each call returns the next list (cut to max_tokens)."""
    state = start(budget, forcing)
    calls = iter(script)
    while not state.done:
        out = next(calls)[: state.remaining]
        state = absorb(state, out, TP)
    return state


def test_budget_runs_out_exactly() -> None:
    state = run(5, 0, [[20, 21, 22, 23, 24, 25, 26]])
    assert state.ids == (20, 21, 22, 23, 24) and state.tokens == 5
    assert state.ran_out and state.done and state.forced == 0
    assert answer_suffix(state, TP) == (NL, *TP.answer_final)  # newline added, Final Answer: appended


def test_early_stop_without_forcing() -> None:
    state = run(10, 0, [[20, 21, NL, STOP]])
    assert state.ids == (20, 21, NL) and not state.ran_out and state.done
    assert state.generated == 4  # the stop token was generated but is not thinking
    assert answer_suffix(state, TP) == TP.answer  # ends with a newline already; no Final Answer:


def test_wait_forced_n_times_within_budget() -> None:
    state = run(20, 2, [[20, STOP], [21, STOP], [22, STOP], [99]])
    assert state.ids == (20, 80, 81, 21, 80, 81, 22)
    assert state.forced == 2 and state.forced_at == (1, 4)
    assert not state.ran_out and state.calls == 3


def test_forcing_stops_when_the_word_does_not_fit() -> None:
    # 3 tokens used, budget 4: a two-token Wait does not fit, so the thinking ends (not "ran out").
    state = run(4, 5, [[20, 21, 22, STOP]])
    assert state.ids == (20, 21, 22) and state.forced == 0 and not state.ran_out
    # exactly fits: budget 5 -> Wait appended, then 0 left: ran out with the word as the last tokens
    state = run(5, 5, [[20, 21, 22, STOP]])
    assert state.ids == (20, 21, 22, 80, 81) and state.forced == 1 and state.ran_out


def test_budget_after_forcing_counts_the_forced_tokens() -> None:
    state = run(6, 3, [[20, STOP], [21, 22, 23, 24, 25, 26]])
    assert state.ids == (20, 80, 81, 21, 22, 23) and state.tokens == 6 and state.ran_out


def test_zero_budget_is_no_thinking() -> None:
    state = start(0, 3)
    assert state.done and state.ran_out and state.ids == ()
    assert answer_suffix(state, TP) == TP.answer_final  # the think line already ends in a newline


def test_absorb_rejects_overrun_and_finished() -> None:
    state = start(3, 0)
    with pytest.raises(ValueError, match="exceeds the remaining budget"):
        absorb(state, [1, 2, 3, 4], TP)
    done = run(2, 0, [[5, 6]])
    with pytest.raises(ValueError, match="finished"):
        absorb(done, [1], TP)


def test_prompts_are_concatenations() -> None:
    state = run(3, 0, [[20, 21, 22]])
    assert thinking_prompt([7, 8], start(3, 0), TP) == [7, 8, 1, 50, NL]
    assert answer_prompt([7, 8], state, TP) == [7, 8, 1, 50, NL, 20, 21, 22, NL, 1, 60, NL, 70, 71]


def _script_model(seed: int):
    """A deterministic 'greedy model': the continuation depends only on the prefix (like greedy decoding)."""

    def next_tokens(prefix: tuple[int, ...], max_tokens: int) -> list[int]:
        out: list[int] = []
        rng = random.Random(hash((seed, prefix)))
        while len(out) < max_tokens:
            token = STOP if rng.random() < 0.08 else rng.choice([20, 21, 22, NL, 11])
            out.append(token)
            if token == STOP:
                break
            rng = random.Random(hash((seed, prefix, tuple(out))))
        return out

    return next_tokens


@pytest.mark.parametrize("seed", range(40))
def test_derive_equals_independent_generation(seed: int) -> None:
    model = _script_model(seed)
    forcing = seed % 4
    largest = 64

    def independent(budget: int) -> Thinking:
        state = start(budget, forcing)
        while not state.done:
            state = absorb(state, model(state.ids, state.remaining), TP)
        return state

    full = independent(largest)
    for budget in range(0, largest + 1):
        derived = derive(full, budget, TP)
        alone = independent(budget)
        assert (derived.ids, derived.forced_at, derived.ran_out) == (
            alone.ids,
            alone.forced_at,
            alone.ran_out,
        ), f"seed {seed} budget {budget}"
        assert answer_suffix(derived, TP) == answer_suffix(alone, TP)


def test_derive_checks_its_input() -> None:
    full = run(4, 0, [[20, 21, 22, 23]])
    with pytest.raises(ValueError, match="cannot derive"):
        derive(full, 5, TP)
    with pytest.raises(ValueError, match="finished"):
        derive(start(4, 0), 2, TP)


def test_plan_budgets() -> None:
    plan = plan_budgets([512, 128, 256, 128], prefix_reuse=True)
    assert plan.generate == (512,) and plan.derived == {128: 512, 256: 512}
    assert plan_budgets([256, 128], prefix_reuse=False).generate == (128, 256)
    with pytest.raises(ValueError):
        plan_budgets([-1], prefix_reuse=True)


def test_question_text() -> None:
    text = question_text("Which snake?", {"A": "Viper", "B": "Cobra"})
    assert text == "Which snake?\nA. Viper\nB. Cobra\nReturn your final response within \\boxed{}."


def test_token_protocol_from_the_tiny_tokenizer(tiny_model_dir) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tp = TokenProtocol.from_tokenizer(tok, Protocol())
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    # <|im_start|> is a special token of the tiny tokenizer; "think"/"answer" are ordinary text after it
    assert tp.think[0] == im_start and tok.decode(list(tp.think)) == "<|im_start|>think\n"
    assert tok.decode(list(tp.answer_final)) == "<|im_start|>answer\nFinal Answer:"
    assert tp.stop_ids == {im_start, im_end}
    assert tok.decode(list(tp.wait)) == "Wait"
    assert tp.newline[0] in tp.newline_ending
    with pytest.raises(ValueError, match="single tokens"):
        TokenProtocol.from_tokenizer(tok, Protocol(stop=("STOP HERE",)))
