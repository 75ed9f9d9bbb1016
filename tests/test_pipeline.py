"""The stage runner: resume by hash, atomic commit of a stage's outputs, accounting, funnel."""

from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa
import pytest

import schemas
from curation.config import CurationConfig
from curation.errors import RunConflictError
from curation.pipeline import Stage, StageContext, StageResult, format_funnel, run_stages
from curation.store.runstore import RunStore


class CountingStage(Stage):
    """Writes n rejects; counts how often it really ran."""

    name = "counting"
    outputs: ClassVar[tuple[str, ...]] = ("rejects/counting",)
    runs = 0

    def __init__(self, n: int = 3, lose_one: bool = False) -> None:
        self.n = n
        self.lose_one = lose_one

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {"n": self.n, "shuffle": cfg.ingest.m1_shuffle}

    def run(self, ctx: StageContext) -> StageResult:
        type(self).runs += 1
        rows = [
            {
                "stage": self.name,
                "source": "s",
                "source_ref": f"f:{i}",
                "reason": "r",
                "detail": "",
                "raw": None,
            }
            for i in range(self.n)
        ]
        v = ctx.store.write_table(
            "rejects/counting", pa.Table.from_pylist(rows, schema=schemas.get("rejects").schema)
        )
        return StageResult(
            outputs=[v],
            rows_in=self.n + (1 if self.lose_one else 0),
            rows_out=0,
            rows_rejected=self.n,
            rejected_by_reason={"r": self.n},
        )


def config(shuffle: bool = False) -> CurationConfig:
    return CurationConfig.model_validate(
        {"sources": [{"name": "s", "format": "medqa", "path": "/x"}], "ingest": {"m1_shuffle": shuffle}}
    )


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    # The counting stage needs no Ray; keep the runner from starting one.
    monkeypatch.setattr("curation.pipeline.ensure_ray", lambda cfg: None)
    CountingStage.runs = 0


def test_resume_skips_completed_stage_and_reruns_on_config_change(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    first = run_stages([CountingStage()], config(), store, log=lambda *_: None)
    assert CountingStage.runs == 1 and first[0]["skipped"] is False
    again = run_stages([CountingStage()], config(), RunStore(str(tmp_path / "run")), log=lambda *_: None)
    assert CountingStage.runs == 1 and again[0]["skipped"] is True
    assert again[0]["rows_rejected"] == 3
    with pytest.raises(RunConflictError, match="counting: changed shuffle; rerunning it replaces tables rejects/counting"):
        run_stages([CountingStage()], config(shuffle=True), RunStore(str(tmp_path / "run")), log=lambda *_: None)
    assert CountingStage.runs == 1, "a config change to a committed stage is refused without --force"
    run_stages(
        [CountingStage()], config(shuffle=True), RunStore(str(tmp_path / "run")), force=True, log=lambda *_: None
    )
    assert CountingStage.runs == 2, "--force accepts the change and reruns the stage"
    run_stages(
        [CountingStage()],
        config(shuffle=True),
        RunStore(str(tmp_path / "run")),
        force=True,
        log=lambda *_: None,
    )
    assert CountingStage.runs == 3


def test_broken_accounting_is_an_error_and_commits_nothing(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="4 in != 0 out \\+ 3 rejected"):
        run_stages([CountingStage(lose_one=True)], config(), store, log=lambda *_: None)
    assert "rejects/counting" not in RunStore(str(tmp_path / "run")).tables()


def test_manifest_records_config_and_funnel(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    records = run_stages([CountingStage()], config(), store, log=lambda *_: None)
    m = RunStore(str(tmp_path / "run")).manifest
    assert m["config"]["sources"][0]["name"] == "s" and len(m["config_hash"]) == 16
    assert m["package_version"] == "0.1.0"
    assert m["stages"]["counting"]["rejected_by_reason"] == {"r": 3}
    funnel = format_funnel(records)
    assert "counting" in funnel and "r" in funnel.splitlines()[-1]
