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
    with pytest.raises(
        RunConflictError, match="counting: changed shuffle; rerunning it replaces tables rejects/counting"
    ):
        run_stages(
            [CountingStage()], config(shuffle=True), RunStore(str(tmp_path / "run")), log=lambda *_: None
        )
    assert CountingStage.runs == 1, "a config change to a committed stage is refused without --force"
    run_stages(
        [CountingStage()],
        config(shuffle=True),
        RunStore(str(tmp_path / "run")),
        force=True,
        log=lambda *_: None,
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


class UpstreamStage(CountingStage):
    """Stage A: its own input is ingest.m1_shuffle."""

    name = "upstream"
    outputs: ClassVar[tuple[str, ...]] = ("rejects/upstream",)

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {"shuffle": cfg.ingest.m1_shuffle}

    def run(self, ctx: StageContext) -> StageResult:
        type(self).runs += 1
        v = ctx.store.write_table("rejects/upstream", schemas.get("rejects").schema.empty_table())
        return StageResult(outputs=[v], rows_in=0, rows_out=0)


class DownstreamStage(UpstreamStage):
    """Stage B reads A's table; its own input is ingest.max_question_chars."""

    name = "downstream"
    inputs: ClassVar[tuple[str, ...]] = ("rejects/upstream",)
    outputs: ClassVar[tuple[str, ...]] = ("rejects/downstream",)

    def hash_inputs(self, cfg: CurationConfig) -> dict[str, Any]:
        return {"max_chars": cfg.ingest.max_question_chars}

    def run(self, ctx: StageContext) -> StageResult:
        type(self).runs += 1
        v = ctx.store.write_table("rejects/downstream", schemas.get("rejects").schema.empty_table())
        return StageResult(outputs=[v], rows_in=0, rows_out=0)


def cfg2(shuffle: bool = False, max_chars: int = 100) -> CurationConfig:
    return CurationConfig.model_validate(
        {
            "sources": [{"name": "s", "format": "medqa", "path": "/x"}],
            "ingest": {"m1_shuffle": shuffle, "max_question_chars": max_chars},
        }
    )


def test_a_new_or_changed_later_stage_resumes_the_earlier_ones(tmp_path):
    UpstreamStage.runs = DownstreamStage.runs = 0
    run = str(tmp_path / "run")
    quiet = {"log": lambda *_: None}
    run_stages([UpstreamStage()], cfg2(), RunStore(run), **quiet)
    # Adding a stage: the earlier one is resumed, the new one runs.
    records = run_stages([UpstreamStage(), DownstreamStage()], cfg2(), RunStore(run), **quiet)
    assert [r["skipped"] for r in records] == [True, False]
    assert (UpstreamStage.runs, DownstreamStage.runs) == (1, 1)
    # Changing only the later stage's settings: refused for that stage alone, named with its tables.
    with pytest.raises(RunConflictError) as info:
        run_stages([UpstreamStage(), DownstreamStage()], cfg2(max_chars=7), RunStore(run), **quiet)
    assert "downstream: changed max_chars; rerunning it replaces tables rejects/downstream" in str(info.value)
    assert "upstream:" not in str(info.value).replace("downstream:", "")
    # --force on just that stage replaces it and leaves the earlier one alone.
    run_stages([DownstreamStage()], cfg2(max_chars=7), RunStore(run), force=True, **quiet)
    assert (UpstreamStage.runs, DownstreamStage.runs) == (1, 2)
    # Changing the earlier stage names what is built on it.
    with pytest.raises(RunConflictError) as info:
        run_stages([UpstreamStage()], cfg2(shuffle=True, max_chars=7), RunStore(run), **quiet)
    message = str(info.value)
    assert "upstream: changed shuffle; rerunning it replaces tables rejects/upstream" in message
    assert "then downstream (tables rejects/downstream) is built on replaced tables" in message
    run_stages([UpstreamStage()], cfg2(shuffle=True, max_chars=7), RunStore(run), force=True, **quiet)
    # The later stage's own inputs did not change, but its input table did: it reruns without --force.
    records = run_stages(
        [UpstreamStage(), DownstreamStage()], cfg2(shuffle=True, max_chars=7), RunStore(run), **quiet
    )
    assert [r["skipped"] for r in records] == [True, False]
    assert (UpstreamStage.runs, DownstreamStage.runs) == (2, 3)


def test_a_failing_first_run_writes_no_manifest(tmp_path):
    class Failing(UpstreamStage):
        name = "failing"

        def run(self, ctx: StageContext) -> StageResult:
            ctx.store.write_table("rejects/upstream", schemas.get("rejects").schema.empty_table())
            raise RuntimeError("boom")

    store = RunStore(str(tmp_path / "run"))
    with pytest.raises(RuntimeError, match="boom"):
        run_stages([Failing()], cfg2(), store, log=lambda *_: None)
    assert not (tmp_path / "run" / "manifest.json").exists()
    assert not list((tmp_path / "run").rglob("*.parquet")), (
        "the failed stage's uncommitted version is removed"
    )


def test_stage_resources_apply_the_config_override_and_refuse_what_would_be_ignored():
    from curation.config import ConfigError
    from curation.pipeline import Resources, stage_resources
    from curation.stages import stage_registry

    stages = [cls() for cls in stage_registry().values()]
    base = {"sources": [{"name": "a", "format": "medqa", "path": "x.jsonl"}]}
    declared = stage_resources(stages, CurationConfig.model_validate(base))
    dedup = next(s for s in stages if s.name == "dedup")
    assert declared["dedup"] == dedup.resources and declared["score"] is None
    cfg = CurationConfig.model_validate({**base, "resources": {"dedup": {"cpus": 0.5, "memory_gib": 3}}})
    got = stage_resources(stages, cfg)["dedup"]
    assert got == Resources(cpus=0.5, gpus=dedup.resources.gpus, memory_gib=3.0)
    assert got.ray_options() == {"num_cpus": 0.5, "memory": 3 * 2**30}
    with pytest.raises(ConfigError, match=r"resources\.dedupe: no such stage"):
        stage_resources(stages, CurationConfig.model_validate({**base, "resources": {"dedupe": {"cpus": 1}}}))
    with pytest.raises(ConfigError, match=r"resources\.score: stage 'score' launches no Ray work"):
        stage_resources(stages, CurationConfig.model_validate({**base, "resources": {"score": {"cpus": 1}}}))
    with pytest.raises(Exception, match="greater than 0"):
        CurationConfig.model_validate({**base, "resources": {"dedup": {"cpus": 0}}})


def test_a_stage_no_node_can_run_is_reported_not_left_to_hang(ray_local):
    from curation.pipeline import Resources, largest_node, warn_unfit

    have = largest_node()
    assert have["cpus"] == 2 and have["memory_gib"] > 0  # the session's local Ray (tests/conftest.py)
    lines: list[str] = []
    warn_unfit("decontaminate", Resources(cpus=1.0, memory_gib=0.5), lines.append)
    assert lines == []  # fits
    warn_unfit("decontaminate", Resources(cpus=3.0, gpus=1.0), lines.append)
    assert len(lines) == 1
    assert "cpus 3 (largest node: 2)" in lines[0] and "gpus 1 (largest node: 0)" in lines[0]
    assert "resources.decontaminate" in lines[0]
    warn_unfit("score", None, lines.append)  # launches no Ray work of its own
    assert len(lines) == 1


def test_ray_data_retries_of_store_errors_follow_the_config():
    import ray.data

    from curation.pipeline import apply_data_context

    ctx = ray.data.DataContext.get_current()
    off = CurationConfig.model_validate(
        {"sources": [{"name": "s", "format": "medqa", "path": "/x"}], "ray": {"retry_store_errors": False}}
    )
    try:
        apply_data_context(off)
        assert ctx.retried_io_errors == []
        apply_data_context(config())
        assert "AWS Error NETWORK_CONNECTION" in ctx.retried_io_errors
        assert tuple(ctx.retried_io_errors) == ray.data.context.DEFAULT_RETRIED_IO_ERRORS
    finally:
        apply_data_context(config())
