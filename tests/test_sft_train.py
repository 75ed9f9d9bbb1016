"""`m1 sft` end to end on CPU: 2 gloo Ray Train workers, the tiny model, a few dozen curated rows in a real run.

Each run starts a Ray Train worker group (~20-40 s here), so these are marked slow. That a checkpoint serves in
vLLM is checked by test_demo: its evaluation leg generates from the demo's fine-tuned checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.fixture(scope="module")
def curated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from curation.store.runstore import RunStore
    from sft.demo import synthetic_curated

    root = tmp_path_factory.mktemp("sft-run")
    store = RunStore(str(root))
    store.commit([store.write_table("curated", synthetic_curated(40, seed=1))])
    return root


def _config(run: Path, model: Path, name: str, **train: object) -> Path:
    raw = {
        "name": name,
        "run_dir": str(run),
        "data": {"table": "curated"},
        "model": {"path": str(model)},
        "train": {
            "lr": 1e-3,
            "max_steps": 8,
            "global_batch_size": 4,
            "per_device_batch_size": 2,
            "max_length": 2048,
            "save_every_epochs": 0,
            "save_every_steps": 3,
            **train,
        },
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5, "max_failures": 1},
    }
    path = run / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _trainer_state(checkpoint: str) -> dict:
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text())


def _metrics(run: Path, name: str) -> list[dict]:
    from curation.store.catalog import open_catalog

    with open_catalog(str(run)) as con:
        rows = con.sql(f"SELECT * FROM sft_metrics WHERE sft_run = '{name}' ORDER BY step").to_arrow_table()
    return rows.to_pylist()


# The preset's sharding (FSDP2 full shard, one unit per Qwen2DecoderLayer, full state dict) with packing: the
# killed run below trains this way, so a Ray Train restart resumes a sharded run, and the CLI test continues it.
SHARDED = {
    "packing": True,
    "pack_length": 1024,
    "fsdp": {"enabled": True, "wrap": ["Qwen2DecoderLayer"]},
}


@pytest.fixture(scope="module")
def killed_run(curated_run: Path, tiny_model_dir: Path):
    """8 steps on 2 workers, sharded and packed, with two injected worker deaths. Rank 1 is SIGKILLed after
    step 5: Ray Train restarts the group from the step-3 checkpoint. Rank 1 is SIGKILLed again after training
    ended and the step-8 checkpoint was reported: the third attempt finds the run complete and trains nothing.
    What an uninterrupted run must show (loss, metrics, checkpoints, the curve) is checked on this run too; the
    demo and the cluster job run uninterrupted, unpacked DDP fits (the cluster test checks their per-step rows)."""
    from sft.config import load_sft_config
    from sft.train import run_sft

    faults = [
        {"at_step": 5, "rank": 1, "kind": "kill"},
        {"at_step": 8, "rank": 1, "kind": "kill", "when": "train_end"},
    ]
    cfg = load_sft_config(
        _config(curated_run, tiny_model_dir, "killed", **SHARDED),
        {"inject_failure": faults, "resources.max_failures": 2},
    )
    return cfg, run_sft(cfg)


def test_loss_decreases_metrics_and_curve(killed_run, curated_run: Path) -> None:
    _, result = killed_run
    assert result.steps == 8
    # Checkpoints every 3 steps and at the end, each in HF format (3 by the first attempt, 6 and 8 by the second).
    assert [_trainer_state(c)["global_step"] for c in result.checkpoints] == [3, 6, 8]
    rows = _metrics(curated_run, "killed")
    assert [r["step"] for r in rows] == list(range(1, 9))
    losses = [r["loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    # Packed rows of up to 1024 tokens hold several examples each: more than the 4 rows of a step.
    assert all(
        r["tokens_per_s"] > 0 and r["examples"] > 4 and r["tokens"] > r["label_tokens"] > 0 for r in rows
    )
    assert all(0 <= r["padding_share"] < 1 for r in rows)
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in rows)
    assert rows[0]["learning_rate"] == 0.0 and max(r["learning_rate"] for r in rows) == pytest.approx(1e-3)
    png = Path(result.loss_png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_reloads_in_transformers(killed_run, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, result = killed_run
    tok = AutoTokenizer.from_pretrained(result.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)  # it trained
    prompt = (
        tok.apply_chat_template(
            [{"role": "user", "content": "Which drug inhibits cyclooxygenase?"}],
            add_generation_prompt=True,
            tokenize=False,
        )
        + "<|im_start|>think\n"
    )
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_killed_worker_resumes_with_the_same_number_of_steps(killed_run, curated_run: Path) -> None:
    """Both deaths happened once; the run ends with exactly as many optimizer steps as configured, one metrics
    row per step, and no step past the end (the third attempt trained nothing)."""
    cfg, result = killed_run
    sft_dir = Path(cfg.run_dir) / "sft" / "killed"
    assert "injected kill at step_end of step 5 on rank 1" in (sft_dir / "fault-injected-0").read_text()
    assert "injected kill at train_end of step 8 on rank 1" in (sft_dir / "fault-injected-1").read_text()
    final = _trainer_state(result.checkpoint)
    assert final["global_step"] == final["max_steps"] == 8
    rows = _metrics(curated_run, "killed")
    assert [r["step"] for r in rows] == list(range(1, 9))  # one row per step, the restarted attempt's after 3
    attempts = [r["attempt"] for r in rows]
    assert len(set(attempts)) == 2 and len(set(attempts[3:])) == 1 and attempts[0] != attempts[-1]


def test_cli_refuses_to_overwrite_then_resumes_the_sharded_run(killed_run, curated_run: Path, capsys) -> None:
    """`m1 sft` on the killed run's config file: the sharding settings reached the Trainer, the full-state-dict
    HF checkpoint loads in transformers, a second start is refused, and --resume continues the sharded run to
    more steps. (Last in this file: it adds steps to the run the tests above read.)"""
    import torch
    from transformers import AutoModelForCausalLM

    from curation.cli import main
    from sft.train import list_checkpoints

    config = curated_run / "killed.yaml"  # written by the fixture, without its injected faults
    train = curated_run / "sft" / "killed" / "train"
    (step, first), *_ = list_checkpoints(train)
    assert step == 3
    args = torch.load(first / "training_args.bin", weights_only=False)
    assert args.fsdp and args.fsdp_config["transformer_layer_cls_to_wrap"] == ["Qwen2DecoderLayer"]
    assert args.fsdp_config["reshard_after_forward"] is True  # full shard
    assert AutoModelForCausalLM.from_pretrained(first).config.num_hidden_layers == 2
    # A second start without --resume or --force names both ways out, with no traceback.
    assert main(["sft", str(config)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "--force" in err and "Traceback" not in err
    assert main(["sft", str(config), "--resume", "--set", "train.max_steps=10"]) == 0
    out = capsys.readouterr().out
    assert "10 optimizer steps" in out and "checkpoint (HF format)" in out and "padding share" in out
    rows = _metrics(curated_run, "killed")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert all(r["loss"] == r["loss"] and r["loss"] < 20 for r in rows[8:])  # finite
    assert all(r["examples"] > 4 for r in rows[8:])
    # Resumed at its last step, the run trains nothing more and starts no worker group (transformers' Trainer
    # alone would run an 11th step; the workers' own check for Ray Train's restarts is in the killed run).
    checkpoints = list_checkpoints(train)
    assert checkpoints[-1][0] == 10
    assert main(["sft", str(config), "--resume", "--set", "train.max_steps=10"]) == 0
    out = capsys.readouterr().out
    assert "the checkpoint at step 10 ends the run (10 steps): nothing to train" in out
    assert list_checkpoints(train) == checkpoints
    assert [(r["step"], r["loss"]) for r in _metrics(curated_run, "killed")] == [
        (r["step"], r["loss"]) for r in rows
    ]


def test_bad_table_is_a_clear_error(curated_run: Path, tiny_model_dir: Path, capsys) -> None:
    from curation.cli import main

    config = _config(curated_run, tiny_model_dir, "missing")
    raw = yaml.safe_load(config.read_text())
    raw["data"] = {"table": "m23k"}
    config.write_text(yaml.safe_dump(raw))
    assert main(["sft", str(config)]) == 2
    err = capsys.readouterr().err
    assert "has no table 'm23k'" in err and "Traceback" not in err


def test_bad_example_in_parquet_is_a_clear_error(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.cli import main

    data = tmp_path / "train.parquet"
    pq.write_table(
        pa.table({"prompt": ["Q1?\nA. x", "Q2?\nA. y"], "reasoning": ["r", "r"], "answer": ["x", None]}), data
    )
    config = tmp_path / "sft.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "bad",
                "run_dir": str(tmp_path / "run"),
                "data": {"path": str(data), "columns": {"answer": "answer"}},
                "model": {"path": str(tiny_model_dir)},
                "train": {"max_steps": 1, "global_batch_size": 2},
                "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
            }
        )
    )
    assert main(["sft", str(config)]) == 2
    err = capsys.readouterr().err
    assert "empty prompt, reasoning or answer" in err and "Q2?" in err and "Traceback" not in err
