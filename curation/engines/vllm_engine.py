"""vLLM replicas as Ray Data actors: `requests` rows in, `responses` rows out, successes into the ledger.

Each replica is one actor of a Ray Data actor pool holding one ``vllm.LLM``. A Ray Data batch is split by
(kind, sampling parameters) into groups; each group is one ``llm.chat`` or ``llm.generate`` call, so vLLM
batches the whole group. A row that makes its call fail (a prompt longer than ``max_model_len``, a bad
parameter) is isolated by bisection: the call is retried on halves until the failing row stands alone
and becomes a response row with ``error`` set; the others complete normally.

With ``batches_in_flight`` above 1 a replica is :class:`AsyncVLLMReplica` instead: vLLM's async engine (its core
in a child process), several Ray Data batches at once (as ``ray.data.llm``'s ``max_concurrent_batches``), each
row its own engine request, so a failing row fails alone and no batch waits for the previous one to finish.

Resources are declared in :class:`VLLMEngineConfig`, next to the code: one replica reserves
``cpus_per_replica`` CPUs and ``gpus_per_replica`` GPUs (0 on CPU; ``tensor_parallel_size`` on GPU).
Two engines (two models) in one pipeline each get their own actor pool; run concurrently they need the
sum of both reservations (plus a CPU for Ray Data's own tasks), run one after the other they share them.

vllm is imported inside the actor only, so this module imports on machines without vLLM.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from curation.engines.request import canonical_params, engine_params, response_row, responses_table

if TYPE_CHECKING:
    import ray.data

ENGINE_NAME = "vllm"

# Request parameters that are ours, not vLLM's, and must not reach SamplingParams.
_NOT_SAMPLING = frozenset({"n"})


class VLLMEngineConfig(BaseModel):
    """A local vLLM engine on Ray: which model, how many replicas, and what each replica reserves."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # never echo a pasted key

    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="hub id (e.g. Qwen/Qwen2.5-7B-Instruct) or local model directory")
    replicas: int = Field(default=1, ge=1, description="actors in the pool, each holding one vllm.LLM")
    gpus_per_replica: float = Field(
        default=0, ge=0, description="GPUs reserved per replica: 0 on CPU, tensor_parallel_size on GPU"
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    cpus_per_replica: float = Field(
        default=1,
        gt=0,
        description="CPUs reserved per replica; on CPU also the engine's threads (Ray sets OMP_NUM_THREADS)",
    )
    batch_size: int = Field(default=256, ge=1, description="rows per Ray Data batch (one or more vLLM calls)")
    max_model_len: int | None = Field(default=None, ge=1, description="context length; default: the model's")
    dtype: str = Field(default="auto", description="auto, bfloat16, float16 or float32")
    seed: int = 0
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="passed to vllm.LLM as is, e.g. gpu_memory_utilization, enforce_eager",
    )
    cpu_kvcache_space_gib: int | None = Field(
        default=1,
        ge=1,
        description="VLLM_CPU_KVCACHE_SPACE in the actor when on CPU (whole GiB); None: vLLM's",
    )
    engine_core_process: bool | None = Field(
        default=None,
        description="run vLLM's engine core in a child process of the replica (true) or in the actor's own "
        "process (false). Default: a child process on GPU (vLLM's own default: the GPU computes while the "
        "process schedules), the actor's process on CPU, where the two processes share the same cores: "
        "measured 1.7x the generation speed of a child-process core on a 26M model and 1.10x on the tiny one, "
        "loading ~15 s faster (BENCHMARKS.md, vLLM paths)",
    )
    batches_in_flight: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Ray Data batches a replica works on at once. 1: one synchronous vllm.LLM call per batch "
        "(per params group); above 1: vLLM's async engine, its core in a child process, with this many "
        "batches queued in it (ray.data.llm's max_concurrent_batches): BENCHMARKS.md, vLLM paths",
    )
    env_vars: dict[str, str] = Field(default_factory=dict, description="extra environment for each replica")
    flush_every_rows: int | None = Field(
        default=None, ge=1, description="append to the ledger after this many rows (default: once per batch)"
    )

    @model_validator(mode="after")
    def _check_gpus(self) -> VLLMEngineConfig:
        if self.gpus_per_replica and self.gpus_per_replica < self.tensor_parallel_size:
            raise ValueError(
                f"gpus_per_replica={self.gpus_per_replica} is less than tensor_parallel_size="
                f"{self.tensor_parallel_size}: each replica needs one GPU per tensor-parallel rank"
            )
        if self.batches_in_flight > 1 and self.engine_core_process is False:
            raise ValueError(
                "batches_in_flight > 1 runs vLLM's async engine, whose core always runs in a child process: "
                "drop engine_core_process: false, or set batches_in_flight: 1"
            )
        return self

    @property
    def engine_name(self) -> str:
        """The `engine` column of this engine's responses."""
        return ENGINE_NAME

    @property
    def on_cpu(self) -> bool:
        return self.gpus_per_replica == 0

    @property
    def core_in_child_process(self) -> bool:
        """Where vLLM's engine core runs: ``engine_core_process``, else a child process on GPU only."""
        if self.batches_in_flight > 1:
            return True  # vLLM's async engine always runs its core in a child process
        return self.engine_core_process if self.engine_core_process is not None else not self.on_cpu


def sampling_kwargs(params_json: str) -> dict[str, Any]:
    """SamplingParams keyword arguments from a request's canonical params JSON.

    Keys are vLLM's SamplingParams names (temperature, top_p, top_k, max_tokens, stop, seed, ...), which the
    OpenAI names share. No max_tokens means "up to the context length", as in the OpenAI API.
    Salts (keys starting with ``_``, see `curation.engines.request`) are dropped.
    Raises ValueError for n != 1: a `responses` row holds one answer.
    """
    params = json.loads(params_json)
    if not isinstance(params, dict):
        raise ValueError(f"params must be a JSON object, got {params_json!r}")
    params = engine_params(params)
    n = params.get("n", 1)
    if n != 1:
        raise ValueError(f"n={n} is not supported: one request gives one response; send n requests instead")
    kwargs = {k: v for k, v in params.items() if k not in _NOT_SAMPLING}
    kwargs.setdefault("max_tokens", None)
    return kwargs


def _sampling_group(params_json: str) -> str:
    """The params that reach vLLM, as canonical JSON (the raw text when it is not valid JSON)."""
    try:
        params = json.loads(params_json)
    except ValueError:
        return params_json
    return canonical_params(engine_params(params)) if isinstance(params, dict) else params_json


class VLLMReplica:
    """Ray Data callable class: one vllm.LLM per actor; maps `requests` batches to `responses` batches."""

    def __init__(
        self, cfg: Mapping[str, Any], ledger_uri: str | None, driver: Any = None, ledger_lookup: bool = False
    ) -> None:
        self.cfg = VLLMEngineConfig.model_validate(cfg)
        # Same-node replicas stop generating once the driver is gone (kill -9): nobody would read the rows.
        self.driver = driver if driver is not None and driver.same_node() else None
        self._set_environment()
        from curation.engines.ledger import Ledger

        # The engine loads on the first batch that has a row to send: a rerun whose every request the
        # ledger answers never imports vLLM, reserves KV cache or reads the weights.
        self._llm: Any = None
        self._sampling_params: Any = None
        self.load_s: float | None = None
        self.ledger = Ledger(ledger_uri) if ledger_uri else None
        self.front = None
        if ledger_lookup and ledger_uri:  # map_requests: answered ids come from the ledger, not the model
            from curation.engines.streaming import LedgerFront

            self.front = LedgerFront(ledger_uri)

    @property
    def llm(self) -> Any:
        """The replica's ``vllm.LLM``, loaded on first use (seconds to minutes: weights, KV cache, warm-up)."""
        if self._llm is None:
            from vllm import LLM, SamplingParams

            started = time.perf_counter()
            self._llm = LLM(**self._engine_args())
            self._sampling_params = SamplingParams
            self.load_s = time.perf_counter() - started
        return self._llm

    def _engine_args(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.cfg.model,
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "dtype": self.cfg.dtype,
            "seed": self.cfg.seed,
        }
        if self.cfg.max_model_len is not None:
            kwargs["max_model_len"] = self.cfg.max_model_len
        return kwargs | self.cfg.engine_kwargs

    @property
    def loaded(self) -> bool:
        """Whether this replica has loaded its engine (False for a replica that only served the ledger)."""
        return self._llm is not None

    def _set_environment(self) -> None:
        # vllm reads its environment lazily, so setting it before the import configures this replica only.
        # A child-process core stays inside this actor's reservation on the node and exits with the actor.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if self.cfg.core_in_child_process else "0"
        if self.cfg.on_cpu and self.cfg.cpu_kvcache_space_gib is not None:
            # An explicit KV-cache size; vLLM's CPU default (a fraction of node memory) fails on shared nodes.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.cfg.cpu_kvcache_space_gib)
        os.environ.update(self.cfg.env_vars)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.front is None:
            return self._generate_batch(batch)
        cached, send, extra = self.front.split(batch)
        fresh = self._generate_batch(send) if send.num_rows else responses_table([])
        return self.front.join(cached, fresh, extra)

    def _generate_batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[dict[str, Any] | None] = [None] * len(rows)
        for indices in self._chunks(len(rows)):
            if self._driver_gone(rows, indices, out):
                continue
            self._record(self._answer([(i, rows[i]) for i in indices]), out)
        return responses_table([r for r in out if r is not None])

    def _chunks(self, n: int) -> list[range]:
        """Row ranges between ledger appends: the whole batch, or ``flush_every_rows`` at a time."""
        chunk = self.cfg.flush_every_rows or max(1, n)
        return [range(start, min(start + chunk, n)) for start in range(0, n, chunk)]

    def _driver_gone(
        self, rows: list[dict[str, Any]], indices: range, out: list[dict[str, Any] | None]
    ) -> bool:
        """Whether the driver is gone (kill -9); if so the chunk's rows become error rows, generated by nobody."""
        if self.driver is None or self.driver.alive_here():
            return False
        gone = RuntimeError(f"the driver (pid {self.driver.pid}) is gone; not generated")
        for i in indices:
            out[i] = self._error_row(rows[i], gone, attempts=0)
        return True

    def _record(self, fresh: list[tuple[int, dict[str, Any]]], out: list[dict[str, Any] | None]) -> None:
        """Place answered rows and append them to the ledger (which keeps the successes)."""
        for i, row in fresh:
            out[i] = row
        if self.ledger is not None:
            self.ledger.append(responses_table([r for _, r in fresh]))

    def _answer(self, indexed: Sequence[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        """Response rows for (index, request) pairs: grouped by kind and params, one vLLM call per group."""
        groups: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
        answered: list[tuple[int, dict[str, Any]]] = []
        if indexed:
            # Outside the per-group isolation: an engine that cannot load fails the batch, as it always did,
            # instead of turning every row into an error row.
            _ = self.llm
        for i, req in indexed:
            # Salted attempts of one prompt share sampling parameters: one group, one batched vLLM call.
            groups.setdefault((req["kind"], _sampling_group(req["params"])), []).append((i, req))
        for (kind, params_json), members in groups.items():
            try:
                if kind not in ("chat", "completion"):
                    raise ValueError(f"unknown request kind {kind!r} (expected chat or completion)")
                sampling = self._sampling_params(**sampling_kwargs(params_json))
            except Exception as exc:  # vLLM validates with its own exception types: any fails the group
                answered.extend((i, self._error_row(req, exc, attempts=1)) for i, req in members)
                continue
            answered.extend(self._generate_isolated(kind, sampling, members, attempts=1))
        return answered

    def _generate_isolated(
        self, kind: str, sampling: Any, members: Sequence[tuple[int, dict[str, Any]]], attempts: int
    ) -> list[tuple[int, dict[str, Any]]]:
        """One vLLM call for ``members``; if it raises, bisect until the failing rows stand alone."""
        started = time.perf_counter()
        try:
            if kind == "chat":
                conversations = [req["messages"] for _, req in members]
                outputs = self.llm.chat(conversations, sampling, use_tqdm=False)
            else:
                outputs = self.llm.generate([req["prompt"] for _, req in members], sampling, use_tqdm=False)
        except Exception as exc:  # vLLM raises many types (validation, tokenizer, engine): isolate them all
            if len(members) == 1:
                i, req = members[0]
                return [(i, self._error_row(req, exc, attempts))]
            middle = len(members) // 2
            head = self._generate_isolated(kind, sampling, members[:middle], attempts + 1)
            return head + self._generate_isolated(kind, sampling, members[middle:], attempts + 1)
        wall = time.perf_counter() - started
        finished = datetime.now(UTC)
        # Batched generation has no per-row wall time: each row gets an equal share of its call, so the
        # latencies of a run add up to the engine's busy time.
        share = wall / len(members)
        return [
            (i, self._output_row(req, output, latency_s=share, attempts=attempts, created_at=finished))
            for (i, req), output in zip(members, outputs, strict=True)
        ]

    @staticmethod
    def _output_row(
        req: Mapping[str, Any], output: Any, *, latency_s: float, attempts: int, created_at: datetime
    ) -> dict[str, Any]:
        """The response row of a finished vLLM ``RequestOutput`` (its one completion)."""
        completion = output.outputs[0]
        return response_row(
            req,
            engine=ENGINE_NAME,
            text=completion.text,
            finish_reason=completion.finish_reason,
            prompt_tokens=len(output.prompt_token_ids or []),
            completion_tokens=len(completion.token_ids),
            latency_s=latency_s,
            attempts=attempts,
            created_at=created_at,
        )

    @staticmethod
    def _error_row(req: Mapping[str, Any], exc: BaseException, attempts: int) -> dict[str, Any]:
        error = f"{type(exc).__name__}: request {req['request_id']} (key {req['key']}): {str(exc)[:2000]}"
        return response_row(req, engine=ENGINE_NAME, error=error, attempts=attempts)


class AsyncVLLMReplica(VLLMReplica):
    """:class:`VLLMReplica` with several Ray Data batches in flight on one ``vllm.AsyncLLM`` (an async callable
    class: Ray Data calls it concurrently, up to ``batches_in_flight`` times). Each row is its own engine request,
    rendered and tokenized here as ``LLM.chat`` / ``LLM.generate`` do, so the answers are the same as the
    synchronous replica's; a row that fails (too long, bad params) becomes an error row alone, no bisection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tokenizer: Any = None
        self._load_lock: Any = None  # an asyncio.Lock, made in the actor's event loop
        self._sequence = 0  # vLLM request ids must be unique while in flight; a request may repeat in a batch

    async def __call__(self, batch: pa.Table) -> pa.Table:  # type: ignore[override]
        if self.front is None:
            return await self._generate_batch_async(batch)
        cached, send, extra = self.front.split(batch)
        fresh = await self._generate_batch_async(send) if send.num_rows else responses_table([])
        return self.front.join(cached, fresh, extra)

    async def _engine(self) -> Any:
        import asyncio

        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:  # the batches that arrive during the load wait for the one engine
            if self._llm is None:
                from vllm import AsyncEngineArgs, SamplingParams
                from vllm.v1.engine.async_llm import AsyncLLM

                started = time.perf_counter()
                kwargs = self._engine_args()
                kwargs.setdefault("disable_log_stats", True)
                self._llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
                self._tokenizer = self._llm.get_tokenizer()
                self._sampling_params = SamplingParams
                self.load_s = time.perf_counter() - started
        return self._llm

    async def _generate_batch_async(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out: list[dict[str, Any] | None] = [None] * len(rows)
        for indices in self._chunks(len(rows)):
            if self._driver_gone(rows, indices, out):
                continue
            self._record(await self._answer_async([(i, rows[i]) for i in indices]), out)
        return responses_table([r for r in out if r is not None])

    async def _answer_async(
        self, indexed: Sequence[tuple[int, dict[str, Any]]]
    ) -> list[tuple[int, dict[str, Any]]]:
        import asyncio

        if not indexed:
            return []
        # Outside the per-row handling: an engine that cannot load fails the batch.
        engine = await self._engine()
        return list(await asyncio.gather(*(self._answer_one(engine, i, req) for i, req in indexed)))

    def _prompt_token_ids(self, req: Mapping[str, Any]) -> list[int]:
        """The tokens ``LLM.chat`` (chat template, no special tokens added) or ``LLM.generate`` would send."""
        if req["kind"] == "chat":
            text = self._tokenizer.apply_chat_template(
                req["messages"], add_generation_prompt=True, tokenize=False
            )
            return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        if req["kind"] == "completion":
            return list(self._tokenizer(req["prompt"])["input_ids"])
        raise ValueError(f"unknown request kind {req['kind']!r} (expected chat or completion)")

    async def _answer_one(self, engine: Any, i: int, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        from vllm.v1.engine.exceptions import EngineDeadError

        started = time.perf_counter()
        self._sequence += 1
        try:
            sampling = self._sampling_params(**sampling_kwargs(req["params"]))
            prompt = {"prompt_token_ids": self._prompt_token_ids(req)}
            final = None
            async for output in engine.generate(prompt, sampling, f"{req['request_id']}.{self._sequence}"):
                final = output
            if final is None:
                raise RuntimeError("the engine returned no output")
        except EngineDeadError:
            raise  # the engine is gone: fail the batch (Ray Data retries it on a new replica), no error rows
        except Exception as exc:  # vLLM raises many types (validation, tokenizer, engine)
            return i, self._error_row(req, exc, attempts=1)
        # Rows overlap here: each has its own wall time, not a share of a call's.
        latency = time.perf_counter() - started
        return i, self._output_row(req, final, latency_s=latency, attempts=1, created_at=datetime.now(UTC))


def generate(
    requests: ray.data.Dataset,
    cfg: VLLMEngineConfig,
    ledger_uri: str | None = None,
    *,
    ledger_lookup: bool = False,
) -> ray.data.Dataset:
    """Answer every `requests` row with vLLM replicas; one `responses` row per request, in a lazy Dataset.

    Successful rows are appended to ``Ledger(ledger_uri)`` after each batch (or every ``flush_every_rows``),
    so an interrupted run keeps what it finished. With ``ledger_lookup`` each replica first serves the ids the
    ledger answers (``cached`` rows, see `curation.engines.streaming`); without it nothing is skipped here
    (``curation.engines.run_requests`` plans before calling).
    """
    import ray.data

    from curation.engines.liveness import DriverRef

    in_flight = cfg.batches_in_flight
    # An async replica runs up to max_concurrency calls at once and Ray Data queues twice that, as ray.data.llm
    # does (max_concurrency reaches the actor only as a ray_remote_args key, which Ray 2.60 warns about).
    extra: dict[str, Any] = {"max_concurrency": in_flight} if in_flight > 1 else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return requests.map_batches(
            AsyncVLLMReplica if in_flight > 1 else VLLMReplica,
            fn_constructor_kwargs={
                "cfg": cfg.model_dump(),
                "ledger_uri": ledger_uri,
                "driver": DriverRef.current(),
                "ledger_lookup": ledger_lookup,
            },
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                size=cfg.replicas, max_tasks_in_flight_per_actor=2 * in_flight if in_flight > 1 else None
            ),
            num_cpus=cfg.cpus_per_replica,
            num_gpus=cfg.gpus_per_replica,
            **extra,
        )


__all__ = [
    "ENGINE_NAME",
    "AsyncVLLMReplica",
    "VLLMEngineConfig",
    "VLLMReplica",
    "generate",
    "sampling_kwargs",
]
