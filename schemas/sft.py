"""Tables of `m1 sft`: one row per optimizer step of a fine-tuning run."""

from __future__ import annotations

import pyarrow as pa

from schemas.base import TableSchema

SFT_METRICS = TableSchema(
    name="sft_metrics",
    version=1,
    doc="Per-step training metrics of `m1 sft` runs (all runs of this run directory, keyed by sft_run, step).",
    schema=pa.schema(
        [
            pa.field("sft_run", pa.string(), nullable=False),
            pa.field("step", pa.int64(), nullable=False),
            pa.field("epoch", pa.float64(), nullable=False),
            pa.field("loss", pa.float64(), nullable=False),
            pa.field("learning_rate", pa.float64(), nullable=False),
            pa.field("grad_norm", pa.float64(), nullable=True),
            pa.field("tokens_per_s", pa.float64(), nullable=False),
            pa.field("padding_share", pa.float64(), nullable=False),
            pa.field("tokens", pa.int64(), nullable=False),
            pa.field("pad_tokens", pa.int64(), nullable=False),
            pa.field("label_tokens", pa.int64(), nullable=False),
            pa.field("examples", pa.int64(), nullable=False),
            pa.field("step_s", pa.float64(), nullable=False),
            pa.field("attempt", pa.string(), nullable=False),
            pa.field("logged_at", pa.string(), nullable=False),
        ]
    ),
    column_docs={
        "sft_run": "the SFT run's name (config `name`)",
        "step": "optimizer step (1-based); after a resume, the row of the attempt that reached it last",
        "epoch": "step / optimizer steps per epoch",
        "loss": "mean token loss over the assistant tokens of the step, averaged over workers",
        "learning_rate": "learning rate used for the step",
        "grad_norm": "gradient norm before clipping",
        "tokens_per_s": "real (non-pad) tokens processed per second by all workers over the step",
        "padding_share": "pad positions / all positions of the step's batches",
        "tokens": "real tokens of the step, all workers",
        "pad_tokens": "pad positions of the step, all workers",
        "label_tokens": "tokens that carried loss (the assistant turn), all workers",
        "examples": "examples of the step, all workers",
        "step_s": "wall seconds of the step (data, forward, backward, optimizer)",
        "attempt": "id of the worker-group attempt that logged the row (changes after a failure restart)",
        "logged_at": "UTC time the row was logged",
    },
)
