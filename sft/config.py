"""`m1 sft` configuration: YAML validated by pydantic; an unknown key is an error naming the file and key.

name: m1-7b-m23k                    # the SFT run's name: RUN_DIR/sft/<name>/ holds its checkpoints
run_dir: runs/m23k                  # where checkpoints, the sft_metrics table and the loss curve go
data:
  table: m23k                       # a table of run_dir (curated | m23k | m1k) ...
  # path: data/train.parquet        # ... or any Parquet file/folder ...
  # hf: simplescaling/... (split)   # ... or a Hugging Face dataset (needs hub access)
  columns: {prompt: prompt, reasoning: reasoning, answer: distilled_answer_string}
  system_prompt: template_default  # template_default | none | any literal text
model: {path: Qwen/Qwen2.5-7B-Instruct, dtype: bfloat16}
train: {lr: 1.0e-5, epochs: 5, global_batch_size: 16, ...}
resources: {num_workers: 8, use_gpu: true, cpus_per_worker: 8}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from curation.config import ConfigError, NestedError, Strict, format_validation_error, load_yaml


class Columns(Strict):
    """Which input columns hold the three parts of an example."""

    prompt: str = "prompt"
    reasoning: str = "reasoning"
    answer: str = "distilled_answer_string"  # m1 trains on the teacher's answer, after "Answer: "


class DataOptions(Strict):
    table: str | None = None  # a table of the run (curated, m23k, m1k)
    path: str | None = None  # a Parquet file or folder (relative to the config file)
    hf: str | None = None  # a Hugging Face dataset id (loaded with datasets; needs the hub or its cache)
    hf_split: str = "train"
    columns: Columns = Field(default_factory=Columns)
    # What goes into the system turn. "template_default": no system message is passed, so the chat template
    # decides (Qwen2.5-Instruct inserts "You are Qwen, created by Alibaba Cloud..."; m1's `text` carries it).
    # "none": no system message is passed and a template that would insert a default is refused, so what is
    # trained is what is rendered. Any other string is sent as the system message.
    system_prompt: str = "template_default"
    # Examples longer than max_length: dropped (counted and printed); truncating would cut off the answer.
    limit_rows: int | None = Field(default=None, ge=1)  # train on the first N rows only (smoke runs)

    @model_validator(mode="after")
    def _one_source(self) -> DataOptions:
        given = [k for k in ("table", "path", "hf") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"data: give exactly one of table, path, hf (got {given or 'none'})")
        return self


class ModelOptions(Strict):
    path: str  # a local HF model folder or a hub id
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


class FSDPOptions(Strict):
    enabled: bool = False
    # The wrap unit: one FSDP unit per decoder layer (Qwen2DecoderLayer for Qwen2.5); null: the model's
    # _no_split_modules, which for Qwen2 is the decoder layer too.
    wrap: list[str] | None = None
    cpu_offload: bool = False
    # FULL_STATE_DICT gathers one HF-format safetensors checkpoint on rank 0 (loadable by transformers, vLLM).
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = "FULL_STATE_DICT"


class TrainOptions(Strict):
    lr: float = Field(default=1e-5, gt=0)
    epochs: int = Field(default=5, ge=1)
    max_steps: int | None = Field(default=None, ge=1)  # overrides epochs (smoke runs, the demo)
    global_batch_size: int = Field(default=16, ge=1)  # examples (packing: packed rows) per optimizer step
    per_device_batch_size: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    lr_scheduler: str = "cosine"
    weight_decay: float = Field(default=1e-4, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    bf16: bool = False  # mixed precision (m1: true on GPUs); CPU runs keep float32
    max_length: int = Field(default=32768, ge=8)
    gradient_checkpointing: bool = False
    packing: bool = False
    pack_length: int | None = Field(default=None, ge=8)  # tokens per packed row; default max_length
    pack_buffer: int = Field(default=1024, ge=1)  # examples packed together (best-fit decreasing)
    pad_to_multiple_of: int | None = Field(default=None, ge=1)
    seed: int = 42
    save_every_epochs: int = Field(default=1, ge=0)  # 0: no per-epoch checkpoints
    save_every_steps: int | None = Field(default=None, ge=1)
    keep_checkpoints: int | None = Field(default=None, ge=1)  # null: keep all
    fsdp: FSDPOptions = Field(default_factory=FSDPOptions)


class ResourceOptions(Strict):
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    gpus_per_worker: float = Field(default=1, gt=0)
    cpus_per_worker: float = Field(default=1, gt=0)
    # Ray Train restarts the worker group from the last checkpoint this many times after a worker dies.
    max_failures: int = Field(default=2, ge=-1)


class FaultInjection(Strict):
    """For tests and rehearsals: make one worker die once, to exercise FailureConfig resume.

    ``when: step_end`` fails at the end of optimizer step ``at_step`` (before that step's checkpoint, if any);
    ``when: train_end`` fails after training ended and its last checkpoint was reported, so Ray Train restarts
    a run that is already complete (``at_step`` is then the step the run ends at)."""

    at_step: int = Field(ge=1)
    rank: int = 0
    kind: Literal["kill", "raise"] = "kill"
    when: Literal["step_end", "train_end"] = "step_end"


class SFTConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    run_dir: str
    data: DataOptions
    model: ModelOptions
    train: TrainOptions = Field(default_factory=TrainOptions)
    resources: ResourceOptions = Field(default_factory=ResourceOptions)
    ray_address: str | None = None  # null: join RAY_ADDRESS if set, else start a local Ray
    # One failure or several (each happens once); max_failures must allow for all of them.
    inject_failure: list[FaultInjection] = Field(default_factory=list)

    @field_validator("inject_failure", mode="before")
    @classmethod
    def _one_failure_is_a_list_of_one(cls, value: object) -> object:
        return [] if value is None else [value] if isinstance(value, dict | FaultInjection) else value

    @model_validator(mode="after")
    def _run_dir_named(self) -> SFTConfig:
        if not self.run_dir.strip():
            raise NestedError.single(
                "run_dir", "is empty; name the run's folder (it would be the current one)"
            )
        return self

    @model_validator(mode="after")
    def _batch_divides(self) -> SFTConfig:
        per_step = self.train.per_device_batch_size * self.resources.num_workers
        if self.train.global_batch_size % per_step:
            raise ValueError(
                f"train.global_batch_size {self.train.global_batch_size} is not a multiple of "
                f"per_device_batch_size x num_workers = {per_step}"
            )
        return self

    @property
    def grad_accum(self) -> int:
        return self.train.global_batch_size // (self.train.per_device_batch_size * self.resources.num_workers)

    @property
    def pack_length(self) -> int:
        return self.train.pack_length or self.train.max_length


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or "://" in value or value.startswith("hf:"):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def load_sft_config(path: str | Path, overrides: dict | None = None) -> SFTConfig:
    """Read and validate an SFT config; relative paths (run_dir, data.path, a local model) resolve against
    the config file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (name, run_dir, data, model, ...)")
    for section, key in (("data", "path"), ("model", "path")):
        node = raw.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            value = node[key]
            # A model "path" may be a hub id (org/name): resolve only what exists locally or looks like a path.
            local = (path.parent / value).expanduser()
            if section == "data" or value.startswith((".", "/", "~")) or local.exists():
                node[key] = _resolve(path.parent, value)
    if (
        isinstance(raw.get("run_dir"), str) and raw["run_dir"].strip()
    ):  # "" is refused, not the config's folder
        raw["run_dir"] = _resolve(path.parent, raw["run_dir"])
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return SFTConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=str(path))) from None
