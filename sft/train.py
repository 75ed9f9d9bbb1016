"""`m1 sft`: a transformers ``Trainer`` inside Ray Train's ``TorchTrainer``.

Why this loop: the optimizer, scheduler, gradient accumulation, clipping, mixed precision, FSDP (through
accelerate), gradient checkpointing and HF-format checkpoints with full resume state (optimizer, scheduler,
RNG, step) are the transformers ``Trainer``'s, a loop thousands of projects exercise; Ray Train adds what it
is good at: placing workers from config (2 CPU workers here, 8 or 16 GPUs on a cluster), setting up the
process group, streaming Ray Data shards to them, keeping checkpoints in the run's storage and restarting a
failed worker group from the last one (``FailureConfig``). TRL's ``SFTTrainer`` was not used: its
assistant-only loss needs ``{% generation %}`` markers that Qwen2.5's own chat template lacks, and its
dataset preparation wants the data in memory; m1's format, masking and packing are a few pure functions
(:mod:`sft.format`) tested token by token instead.

Layout of an SFT run inside the run directory::

    sft/<name>/train/checkpoint_*/checkpoint/   HF-format checkpoints (model, tokenizer, optimizer, trainer
                                                state), one per epoch and every N steps, from Ray Train
    sft/<name>/metrics/*.parquet                per-step metrics as logged (all attempts)
    sft/<name>/loss.png                         the loss curve
    tables/sft_metrics/                         the per-step table (`m1 sql RUN "SELECT * FROM sft_metrics"`)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from curation.errors import UserError
from curation.jobenv import check_run_dir, local_ray_env
from curation.store.runstore import RunStore
from sft.config import SFTConfig
from sft.data import Plan, collect_lengths, make_plan, training_dataset
from sft.format import Row, collate
from sft.metrics import commit_metrics, plot_loss, write_metric_rows

TRAIN_DIR = "train"  # Ray Train's run name under sft/<name>/
HF_CHECKPOINT = "checkpoint"  # the HF checkpoint folder inside each Ray checkpoint


class SFTError(UserError):
    """An SFT run cannot start or resume as asked."""


# ---- worker side -------------------------------------------------------------------------------------
def _stats_batches(shard: Any, cfg: SFTConfig, pad_id: int, skip: int, epoch: int = 0) -> Any:
    """Collated micro-batches from a Ray Data shard, epoch after epoch, forever: the run's length is
    ``max_steps`` (the same on every worker, so no worker waits on another), not the data's. A resumed run
    starts at its checkpoint's ``epoch`` (that epoch's shuffle seed) and skips the ``skip`` micro-batches of
    it already trained."""

    t = cfg.train
    while True:
        batches = shard.iter_batches(
            batch_size=t.per_device_batch_size,
            batch_format="pyarrow",
            local_shuffle_buffer_size=256 if t.per_device_batch_size < 256 else None,
            local_shuffle_seed=t.seed + epoch,
        )
        for batch in batches:
            if skip:  # resuming mid-epoch: pass over the micro-batches already trained, without collating
                skip -= 1
                continue
            rows = [Row(**r) for r in batch.to_pylist()]
            tensors, stats = collate(rows, pad_id, packed=t.packing, pad_to_multiple_of=t.pad_to_multiple_of)
            tensors["m1_stats"] = stats
            yield tensors
        epoch += 1


def _make_trainer_class() -> type:
    import torch
    from transformers import Trainer

    class SFTTrainer(Trainer):
        """The transformers Trainer, fed collated micro-batches from Ray Data and counting tokens per step."""

        def __init__(self, *args: Any, batches: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._batches = batches
            self._counts = [0, 0, 0, 0]  # tokens, pad, label tokens, examples since the last log
            self._last_log: float | None = None

        def get_train_dataloader(self) -> Any:
            from torch.utils.data import DataLoader, IterableDataset

            batches = self._batches

            class Stream(IterableDataset):
                def __iter__(self) -> Any:
                    return batches()

            return DataLoader(Stream(), batch_size=None, num_workers=0)

        def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            stats = inputs.pop("m1_stats", None)
            # No KV cache in training; with one, transformers would not derive the packed-sequence mask.
            inputs["use_cache"] = False
            if self._last_log is None:  # the first step's clock starts with its batch, not at model load
                self._last_log = time.perf_counter()
            if stats is not None:
                for i, v in enumerate((stats.tokens, stats.padded, stats.label_tokens, stats.examples)):
                    self._counts[i] += v
            return super().training_step(model, inputs, *args, **kwargs)

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs:
                counts = torch.tensor(self._counts, dtype=torch.float64, device=self.args.device)
                if (
                    torch.distributed.is_available()
                    and torch.distributed.is_initialized()
                    and torch.distributed.get_world_size() > 1
                ):
                    torch.distributed.all_reduce(counts)
                now = time.perf_counter()
                dt = max(now - (self._last_log or now), 1e-9)
                tokens, pad, label_tokens, examples = (int(x) for x in counts.tolist())
                logs.update(
                    tokens=tokens,
                    pad_tokens=pad,
                    label_tokens=label_tokens,
                    examples=examples,
                    tokens_per_s=tokens / dt,
                    padding_share=pad / (tokens + pad) if tokens + pad else 0.0,
                    step_s=dt,
                )
                self._counts = [0, 0, 0, 0]
                self._last_log = now
            super().log(logs, *args, **kwargs)

    return SFTTrainer


def _callbacks(cfg: SFTConfig, plan: Plan, paths: dict[str, str], rank: int, attempt: str) -> list[Any]:
    import torch
    from transformers import TrainerCallback

    class SaveSchedule(TrainerCallback):
        """A checkpoint every save_every_epochs epochs, every save_every_steps steps, and at the end."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            s = state.global_step
            t = cfg.train
            if (
                s == plan.max_steps
                or (t.save_every_epochs and s % (plan.steps_per_epoch * t.save_every_epochs) == 0)
                or (t.save_every_steps and s % t.save_every_steps == 0)
            ):
                control.should_save = True
            return control

    class ReportCheckpoint(TrainerCallback):
        """Hand each HF checkpoint to Ray Train, which copies it into the run's storage (rank 0's copy holds
        the full model; every rank reports so Ray's checkpoint bookkeeping stays in step)."""

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            import ray.train

            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.barrier()
            src = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            metrics = {"step": state.global_step, "epoch": state.global_step / plan.steps_per_epoch}
            if rank == 0 and src.is_dir():
                with tempfile.TemporaryDirectory(prefix="m1-sft-ckpt-") as tmp:
                    shutil.move(str(src), Path(tmp) / HF_CHECKPOINT)
                    (Path(tmp) / HF_CHECKPOINT / "m1_sft.json").write_text(
                        json.dumps({"step": state.global_step, "sft_run": cfg.name, "plan": asdict(plan)})
                    )
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
                # The upload is done when report returns: mark the stored copy complete, so a restarted worker
                # group finds it even if the controller had not registered it before the failure.
                _mark_complete(Path(paths["train"]), state.global_step)
            else:
                ray.train.report(metrics, checkpoint=None)
                if src.is_dir() and rank != 0:
                    shutil.rmtree(src, ignore_errors=True)
            return control

    class MetricsWriter(TrainerCallback):
        """Rank 0 appends one row per step to Parquet files under the run (flushed every 20 steps and at each
        checkpoint), which the driver turns into the sft_metrics table."""

        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self.part = 0

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> Any:
            if rank != 0 or not logs or "loss" not in logs:
                return control
            self.rows.append(
                {
                    "sft_run": cfg.name,
                    "step": state.global_step,
                    "epoch": state.global_step / plan.steps_per_epoch,
                    "loss": float(logs["loss"]),
                    "learning_rate": float(logs.get("learning_rate", 0.0)),
                    "grad_norm": None if logs.get("grad_norm") is None else float(logs["grad_norm"]),
                    **{
                        k: logs[k]
                        for k in ("tokens_per_s", "padding_share", "tokens", "pad_tokens", "label_tokens")
                    },
                    "examples": logs["examples"],
                    "step_s": logs["step_s"],
                    "attempt": attempt,
                    "logged_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
                    + f".{time.time_ns() % 10**9:09d}",
                }
            )
            if state.global_step % 10 == 0 or state.global_step == plan.max_steps:
                r = self.rows[-1]
                print(
                    f"[sft] step {r['step']}/{plan.max_steps} epoch {r['epoch']:.2f} loss {r['loss']:.4f} "
                    f"lr {r['learning_rate']:.3g} tokens/s {r['tokens_per_s']:,.0f} padding {r['padding_share']:.1%}",
                    flush=True,
                )
            if len(self.rows) >= 20:
                self.flush()
            return control

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.flush()
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.flush()
            return control

        def flush(self) -> None:
            if not self.rows:
                return

            write_metric_rows(paths["metrics"], self.rows, f"{attempt}-{self.part:05d}")
            self.rows = []
            self.part += 1

    callbacks: list[Any] = [SaveSchedule(), MetricsWriter(), ReportCheckpoint()]
    faults = [(i, f) for i, f in enumerate(cfg.inject_failure) if f.rank == rank]
    if faults:

        class InjectFailure(TrainerCallback):
            """Test hook: this worker dies once at each configured point (a marker file per point makes it
            once)."""

            def _maybe_fail(self, state: Any, when: str) -> None:
                for i, fault in faults:
                    marker = Path(f"{paths['fault_marker']}-{i}")
                    if fault.when != when or state.global_step != fault.at_step or marker.exists():
                        continue
                    marker.write_text(
                        f"injected {fault.kind} at {when} of step {state.global_step} on rank {rank}\n"
                    )
                    if fault.kind == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError(
                        f"injected failure at {when} of step {state.global_step} on rank {rank}"
                    )

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
                self._maybe_fail(state, "step_end")
                return control

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
                self._maybe_fail(state, "train_end")
                return control

        callbacks.append(InjectFailure())
    return callbacks


def _training_args(cfg: SFTConfig, plan: Plan, output_dir: str) -> Any:
    from transformers import TrainingArguments

    t = cfg.train
    fsdp: dict[str, Any] = {}
    if t.fsdp.enabled:
        fsdp_config: dict[str, Any] = {
            "version": 2,
            "reshard_after_forward": True,  # full shard: parameters, gradients and optimizer state
            "state_dict_type": t.fsdp.state_dict_type,
            "cpu_offload": t.fsdp.cpu_offload,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            # Under FSDP, activation checkpointing is FSDP's (no redundant all-gather in backward).
            "activation_checkpointing": t.gradient_checkpointing,
        }
        if t.fsdp.wrap:
            fsdp_config["transformer_layer_cls_to_wrap"] = t.fsdp.wrap
        fsdp = {"fsdp": True, "fsdp_config": fsdp_config}
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=plan.warmup_steps,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        max_grad_norm=t.max_grad_norm,
        max_steps=plan.max_steps,
        bf16=t.bf16,
        gradient_checkpointing=t.gradient_checkpointing and not t.fsdp.enabled,
        logging_steps=1,
        save_strategy="no",  # SaveSchedule decides (per epoch and every N steps)
        report_to="none",
        use_cpu=not cfg.resources.use_gpu,
        seed=t.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ignore_data_skip=True,  # the stream skips the trained micro-batches itself, without collating them
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        **fsdp,
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: load the model, build the Trainer, train (resuming if a checkpoint
    exists), report checkpoints."""
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = SFTConfig.model_validate(config["sft"])
    plan = Plan(**config["plan"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    attempt = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(cfg.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model.path,
        dtype=getattr(torch, cfg.model.dtype),
        attn_implementation=cfg.model.attn_implementation,
    )
    model.config.use_cache = False

    resume_dir: str | None = None
    # After a worker failure (FailureConfig) Ray Train hands back the last checkpoint it registered; one
    # reported just before the failure may be stored but not yet registered, so the newest complete one in
    # storage wins (this also covers `m1 sft --resume`).
    checkpoint = ray.train.get_checkpoint()
    stored = list_checkpoints(Path(config["paths"]["train"]))
    if stored:
        registered = _step_of(Path(checkpoint.path) / HF_CHECKPOINT) if checkpoint is not None else -1
        if stored[-1][0] > registered:
            checkpoint = ray.train.Checkpoint(str(stored[-1][1].parent))
    skip = epoch = 0
    # One local folder per attempt, the same for every rank of a node, so rank 0's checkpoint also holds
    # the other local ranks' RNG states (the barrier in ReportCheckpoint waits for their writes).
    start = _step_of(Path(checkpoint.path) / HF_CHECKPOINT) if checkpoint is not None else 0
    if start >= plan.max_steps:
        # The run is done: Ray Train restarted an attempt that failed after its last checkpoint (in teardown,
        # say, on a loaded machine). Resumed there, transformers' Trainer would still train one step past
        # max_steps (seen: a 4th metrics row of a 3-step run), so no Trainer starts at all.
        if rank == 0:
            print(
                f"[sft] the checkpoint at step {start} ends the run ({plan.max_steps} steps): nothing to train"
            )
        return
    output_dir = os.path.join(tempfile.gettempdir(), f"m1-sft-{config['run_id']}-from-{start}")
    with checkpoint.as_directory() if checkpoint is not None else nullcontext() as ckpt_dir:
        if ckpt_dir is not None:
            resume_dir = os.path.join(ckpt_dir, HF_CHECKPOINT)
            step = json.loads(Path(resume_dir, "trainer_state.json").read_text())["global_step"]
            skip = (step % plan.steps_per_epoch) * cfg.grad_accum
            epoch = step // plan.steps_per_epoch
            if rank == 0:
                print(f"[sft] resuming from step {step} ({resume_dir})", flush=True)
        shard = ray.train.get_dataset_shard("train")
        trainer = _make_trainer_class()(
            model=model,
            args=_training_args(cfg, plan, output_dir),
            processing_class=tokenizer,
            batches=lambda: _stats_batches(shard, cfg, pad_id, skip, epoch),
            callbacks=_callbacks(cfg, plan, config["paths"], rank, attempt),
        )
        # One compact progress line every 10 steps (MetricsWriter) instead of the Trainer's dict per step.
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.train(resume_from_checkpoint=resume_dir)
    shutil.rmtree(output_dir, ignore_errors=True)


def _step_of(hf_dir: Path) -> int:
    try:
        return int(json.loads((hf_dir / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError):
        return -1


# ---- driver side -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SFTResult:
    checkpoint: str  # the last HF-format checkpoint (transformers / vLLM load it)
    checkpoints: list[str]
    steps: int
    metrics_rows: int
    loss_png: str | None
    plan: Plan
    wall_s: float


def ensure_ray(cfg: SFTConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # log_to_driver: the workers' progress lines (every 10 steps) reach the terminal.
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        local_ray_env()
        ray.init(include_dashboard=False, log_to_driver=True)


COMPLETE = "m1_complete"


def _mark_complete(train_dir: Path, step: int) -> None:
    for info in sorted(train_dir.glob(f"checkpoint_*/{HF_CHECKPOINT}/m1_sft.json"), reverse=True):
        if json.loads(info.read_text()).get("step") == step:
            (info.parent / COMPLETE).write_text(f"{step}\n")
            return


def _user_error_in(exc: BaseException) -> UserError | None:
    """The UserError inside an exception chain (Ray wraps task errors in its own types), if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def list_checkpoints(train_dir: Path) -> list[tuple[int, Path]]:
    """(step, HF checkpoint dir) of every complete checkpoint in the run's storage, by step."""
    out = []
    for marker in train_dir.glob(f"checkpoint_*/{HF_CHECKPOINT}/{COMPLETE}"):
        out.append((int(marker.read_text()), marker.parent))
    return sorted(out)


def _fit(cfg: SFTConfig, plan: Plan, paths: dict[str, str], train_dir: Path) -> Any:
    """One TorchTrainer.fit() of the run; a failure names where the run stands and how to go on."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    res = cfg.resources
    resources = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        resources["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "sft": cfg.model_dump(mode="json"),
            "plan": asdict(plan),
            "paths": paths,
            "run_id": uuid.uuid4().hex[:8],
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=TRAIN_DIR,
            storage_path=str(train_dir.parent),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
        ),
        datasets={"train": training_dataset(cfg)},
    )
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps the worker's error; say where the run stands and how to go on
        done = list_checkpoints(train_dir)
        where = f"last checkpoint at step {done[-1][0]}" if done else "no checkpoint yet"
        raise SFTError(
            f"SFT run {cfg.name!r} failed ({where}): {exc}\nrerun with --resume to continue"
        ) from exc


def run_sft(cfg: SFTConfig, *, resume: bool = False, force: bool = False) -> SFTResult:
    """Train as configured; returns where the checkpoints, metrics table and loss curve are."""
    started = time.perf_counter()
    # The config's run_dir (resolved against the config's folder) must not land in a Ray job's working dir.
    check_run_dir(cfg.run_dir, what="the SFT config's run_dir")
    store = RunStore(cfg.run_dir)
    if not store.is_local:
        raise SFTError(
            f"run_dir {cfg.run_dir!r}: m1 sft writes checkpoints to a local or shared filesystem path"
        )
    sft_dir = Path(store.path(f"sft/{cfg.name}"))
    train_dir = sft_dir / TRAIN_DIR
    existing = list_checkpoints(train_dir)
    if sft_dir.exists() and force:
        shutil.rmtree(sft_dir)
        existing = []
    elif existing and not resume:
        raise SFTError(
            f"SFT run {cfg.name!r} already has {len(existing)} checkpoint(s) in {train_dir} (last at step "
            f"{existing[-1][0]}): add --resume to continue from it, or --force to start over"
        )
    elif resume and not existing:
        print(f"[sft] --resume: no checkpoint of {cfg.name!r} yet; starting from the base model", flush=True)
    sft_dir.mkdir(parents=True, exist_ok=True)
    # A stale Ray Train run state without a checkpoint would make Ray refuse or confuse a fresh start.
    if not existing and train_dir.exists():
        shutil.rmtree(train_dir)

    ensure_ray(cfg)
    try:
        plan = make_plan(cfg, collect_lengths(cfg))
    except Exception as exc:  # a bad example fails inside a Ray Data task: show the user's error, not Ray's
        user = _user_error_in(exc)
        if user is None:
            raise
        raise SFTError(f"SFT run {cfg.name!r}: {user}") from None
    print(f"[sft] {cfg.name}: {plan.describe()}", flush=True)
    paths = {
        "metrics": str(sft_dir / "metrics"),
        "fault_marker": str(sft_dir / "fault-injected"),
        "train": str(train_dir),
    }
    if existing and existing[-1][0] >= plan.max_steps:
        # Resumed at (or past) its last step: nothing to train, so no worker group starts (it would only find
        # the same; the workers' own check stays, for Ray Train restarting an attempt that failed after its
        # last checkpoint).
        print(
            f"[sft] {cfg.name}: the checkpoint at step {existing[-1][0]} ends the run ({plan.max_steps} steps): "
            "nothing to train",
            flush=True,
        )
        result = None
    else:
        result = _fit(cfg, plan, paths, train_dir)
    # The last checkpoint Ray registered is complete by definition; marking it here as well as in the worker
    # means a marker the worker's write lost (a slow shared filesystem) cannot make the run look shorter.
    if result is not None and result.checkpoint is not None:
        final = Path(result.checkpoint.path) / HF_CHECKPOINT
        if (final / "m1_sft.json").is_file() and not (final / COMPLETE).exists():
            step = json.loads((final / "m1_sft.json").read_text())["step"]
            (final / COMPLETE).write_text(f"{step}\n")
    checkpoints = list_checkpoints(train_dir)
    if not checkpoints:
        raise SFTError(f"SFT run {cfg.name!r} finished but left no checkpoint in {train_dir}")
    # Also when nothing trained: a run killed after its last checkpoint but before this commit gets its table.
    rows = commit_metrics(store, cfg.name, paths["metrics"])
    png = plot_loss(store, cfg.name, sft_dir / "loss.png")
    return SFTResult(
        checkpoint=str(checkpoints[-1][1]),
        checkpoints=[str(p) for _, p in checkpoints],
        steps=checkpoints[-1][0],
        metrics_rows=rows,
        loss_png=str(png) if png else None,
        plan=plan,
        wall_s=time.perf_counter() - started,
    )
