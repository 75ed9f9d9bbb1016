"""The SFT data path: a run's table (or Parquet, or a HF dataset) -> Ray Data -> tokenized (packed) rows.

Nothing is collected on the driver except one integer per example (its token length, for the plan). The
rows stream from Parquet through Ray Data tasks that tokenize (and pack) them, then through
``streaming_split`` to the training workers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import pyarrow as pa

from curation.errors import UserError
from curation.store.runstore import RunStore
from sft.config import SFTConfig
from sft.format import (
    Example,
    FormatError,
    pack_best_fit,
    pack_rows,
    padding_share,
    row_of,
    tokenize_example,
)

ROW_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int32())),
        ("position_ids", pa.list_(pa.int32())),
        ("num_examples", pa.int32()),
    ]
)


class DataError(UserError):
    """The training data cannot be read or lacks a column."""


def source_dataset(cfg: SFTConfig) -> Any:
    """A Ray Dataset with the three configured columns, read lazily from the configured source."""
    import ray.data

    cols = cfg.data.columns
    wanted = [cols.prompt, cols.reasoning, cols.answer]
    d = cfg.data
    if d.table:
        try:
            store = RunStore(cfg.run_dir, create=False)
        except FileNotFoundError:
            raise DataError(f"run directory {cfg.run_dir!r} does not exist (data.table: {d.table})") from None
        if not store.has_table(d.table):
            raise DataError(
                f"run {cfg.run_dir!r} has no table {d.table!r} (it has {sorted(store.tables())}); "
                "curate first, or point data.path at a Parquet file"
            )
        where = f"table {d.table!r} of {cfg.run_dir}"
        available = store.dataset(d.table).schema.names
        location = store.table_location(d.table)
    elif d.path:
        import pyarrow.dataset as pads

        where = d.path
        try:
            available = pads.dataset(d.path, format="parquet").schema.names
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataError(f"data.path {d.path}: cannot read it as Parquet ({exc})") from None
        location = d.path
    else:
        import datasets

        where = f"HF dataset {d.hf} ({d.hf_split})"
        hf = datasets.load_dataset(d.hf, split=d.hf_split)
        missing = [c for c in wanted if c not in hf.column_names]
        if missing:
            raise DataError(
                f"{where}: missing column(s) {missing}; it has {hf.column_names} (set data.columns)"
            )
        ds = ray.data.from_huggingface(hf.select_columns(wanted))
        return ds.limit(d.limit_rows) if d.limit_rows else ds
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; it has {available} (set data.columns)")
    ds = ray.data.read_parquet(location).select_columns(wanted)
    return ds.limit(d.limit_rows) if d.limit_rows else ds


@lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _triples(batch: pa.Table, cfg: SFTConfig) -> Any:
    """(prompt, reasoning, answer) of every row of a batch; an empty part is an error quoting the prompt."""
    c = cfg.data.columns
    for p, r, a in zip(
        batch.column(c.prompt).to_pylist(),
        batch.column(c.reasoning).to_pylist(),
        batch.column(c.answer).to_pylist(),
        strict=True,
    ):
        if not p or r is None or a is None:
            raise FormatError(
                f"an example has an empty prompt, reasoning or answer (columns {c.prompt}, {c.reasoning}, "
                f"{c.answer}; prompt starts {str(p)[:60]!r})"
            )
        yield p, r, a


def _examples(batch: pa.Table, cfg: SFTConfig) -> tuple[list[Example], int]:
    """Tokenized examples of a batch, and how many were dropped for exceeding max_length."""
    tok = _tokenizer(cfg.model.path)
    out: list[Example] = []
    too_long = 0
    for p, r, a in _triples(batch, cfg):
        ex = tokenize_example(tok, p, r, a, cfg.data.system_prompt)
        if len(ex.input_ids) > cfg.train.max_length:
            too_long += 1
            continue
        out.append(ex)
    return out, too_long


def lengths_batch(batch: pa.Table, cfg: SFTConfig) -> pa.Table:
    """Token length of every example (-1 for one over max_length): the only data the driver collects.

    A bad example becomes an ``error`` value rather than an exception: Ray Data would wrap the exception in
    its own types and the user would see a traceback instead of the message."""
    tok = _tokenizer(cfg.model.path)
    lengths: list[int] = []
    error: list[str | None] = []
    try:
        for p, r, a in _triples(batch, cfg):
            n = len(tokenize_example(tok, p, r, a, cfg.data.system_prompt).input_ids)
            lengths.append(n if n <= cfg.train.max_length else -1)
            error.append(None)
    except FormatError as exc:
        lengths.append(-2)
        error.append(str(exc))
    return pa.table({"length": pa.array(lengths, pa.int32()), "error": pa.array(error, pa.string())})


def rows_batch(batch: pa.Table, cfg: SFTConfig) -> pa.Table:
    """Training rows of a batch: one per example, or examples packed best-fit into rows of pack_length."""
    examples, _ = _examples(batch, cfg)
    rows = pack_rows(examples, cfg.pack_length) if cfg.train.packing else [row_of(e) for e in examples]
    return pa.Table.from_pylist([asdict(r) for r in rows], schema=ROW_SCHEMA)


def training_dataset(cfg: SFTConfig) -> Any:
    """Source -> tokenized (packed) rows, lazily. Packing happens within batches of pack_buffer examples."""
    batch_size = cfg.train.pack_buffer if cfg.train.packing else 256
    return source_dataset(cfg).map_batches(
        rows_batch, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", batch_size=batch_size
    )


@dataclass(frozen=True)
class Plan:
    """What a run will do, computed before training from the token lengths."""

    examples: int  # rows of the source
    too_long: int  # dropped: longer than max_length
    rows_per_epoch: int  # training rows (examples, or packed rows)
    rows_per_worker: int  # per epoch, after the equal split
    micro_batches_per_epoch: int  # per worker
    steps_per_epoch: int
    max_steps: int
    warmup_steps: int
    tokens_per_epoch: int
    padding_share_unpacked: float  # estimated over consecutive batches of per_device_batch_size
    padding_share_packed: float

    def describe(self) -> str:
        return (
            f"{self.examples:,} examples ({self.too_long:,} over max_length, dropped), "
            f"{self.tokens_per_epoch:,} tokens/epoch; {self.rows_per_epoch:,} training rows/epoch, "
            f"{self.rows_per_worker:,} per worker; {self.steps_per_epoch:,} optimizer steps/epoch, "
            f"{self.max_steps:,} in all ({self.warmup_steps} warmup); estimated padding share "
            f"{self.padding_share_unpacked:.1%} unpacked, {self.padding_share_packed:.1%} packed"
        )


def packed_lengths(lengths: list[int], capacity: int, buffer: int) -> list[int]:
    """Lengths of the rows that packing ``lengths`` (in chunks of ``buffer`` examples) makes."""

    out = []
    for i in range(0, len(lengths), buffer):
        chunk = lengths[i : i + buffer]
        out += [sum(chunk[j] for j in b) for b in pack_best_fit(chunk, capacity)]
    return out


def make_plan(cfg: SFTConfig, all_lengths: list[int]) -> Plan:
    """Steps per epoch, max steps, warmup and padding estimates from the examples' token lengths."""
    lengths = [n for n in all_lengths if n >= 0]
    if not lengths:
        raise DataError(f"no training example fits max_length {cfg.train.max_length} (of {len(all_lengths)})")
    t = cfg.train
    packed = packed_lengths(lengths, cfg.pack_length, t.pack_buffer)
    rows = len(packed) if t.packing else len(lengths)
    workers = cfg.resources.num_workers
    per_worker = rows // workers  # Ray's equal split drops at most workers-1 rows per epoch
    if per_worker == 0:
        raise DataError(f"{rows} training rows cannot feed {workers} workers")
    micro = math.ceil(per_worker / t.per_device_batch_size)
    steps_per_epoch = max(1, micro // cfg.grad_accum)
    max_steps = t.max_steps or t.epochs * steps_per_epoch
    return Plan(
        examples=len(all_lengths),
        too_long=len(all_lengths) - len(lengths),
        rows_per_epoch=rows,
        rows_per_worker=per_worker,
        micro_batches_per_epoch=micro,
        steps_per_epoch=steps_per_epoch,
        max_steps=max_steps,
        warmup_steps=math.ceil(t.warmup_ratio * max_steps),
        tokens_per_epoch=sum(lengths),
        padding_share_unpacked=padding_share(lengths, t.per_device_batch_size),
        padding_share_packed=padding_share(packed, t.per_device_batch_size),
    )


def collect_lengths(cfg: SFTConfig) -> list[int]:
    """Token length of every source example, computed by Ray Data tasks; only the integers reach the driver."""
    ds = source_dataset(cfg).map_batches(
        lengths_batch, fn_kwargs={"cfg": cfg}, batch_format="pyarrow", batch_size=256
    )
    out: list[int] = []
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        errors = [e for e in batch.column("error").to_pylist() if e]
        if errors:
            raise FormatError(errors[0])
        out += batch.column("length").to_pylist()
    return out
