"""Pipeline stages, one file each, in data-flow order (input tables -> output tables).

    questions -> dedup -> decontaminate -> candidates -> score (scores, difficulty) -> teacher (traces)
      -> curate (curated) -> m23k (second decontamination) -> classify (labels) -> sample (samples, m1k)

`PIPELINE` names each stage and where its class lives; `m1 curate` imports them lazily, in this order.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

# (stage name, "module:Class"), in pipeline order. Stages always run in this order.
PIPELINE: list[tuple[str, str]] = [
    ("ingest", "curation.stages.ingest:IngestStage"),
    ("dedup", "curation.stages.dedup:DedupStage"),
    ("decontaminate", "curation.stages.decontaminate:DecontaminateStage"),
    ("score", "curation.stages.score:ScoreStage"),
    ("teacher", "curation.stages.teacher:TeacherStage"),
    ("curate", "curation.stages.curate:CurateStage"),
    ("m23k", "curation.stages.m23k:M23kStage"),
    ("classify", "curation.stages.classify:ClassifyStage"),
    ("sample", "curation.stages.sample:SampleStage"),
]


def stage_registry() -> dict[str, Callable[[], Any]]:
    """Stage name -> stage class, in pipeline order."""
    registry: dict[str, Callable[[], Any]] = {}
    for name, target in PIPELINE:
        module, cls = target.split(":")
        registry[name] = getattr(import_module(module), cls)
    return registry
