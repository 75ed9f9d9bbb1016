"""`m1 sft CONFIG.yaml [--resume] [--force] [--set train.max_steps=20 ...]`: fine-tune on a run's table."""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from curation.config import ConfigError
from curation.modelpath import check_model_path
from sft.config import load_sft_config
from sft.train import run_sft


def _overrides(pairs: list[str]) -> dict[str, Any]:

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.max_steps=20")
        out[key] = yaml.safe_load(value)
    return out


def cmd_sft(args: argparse.Namespace) -> int:

    cfg = load_sft_config(args.config, _overrides(args.set or []))
    check_model_path(cfg.model.path, "model.path", source=str(args.config))  # before any Ray worker starts
    result = run_sft(cfg, resume=args.resume, force=args.force)
    print(
        f"[sft] {cfg.name}: {result.steps} optimizer steps in {result.wall_s:.0f} s\n"
        f"  checkpoint (HF format): {result.checkpoint}\n"
        f"  loss curve: {result.loss_png}\n"
        f'  metrics: m1 sql {cfg.run_dir} "SELECT step, loss, learning_rate, grad_norm, tokens_per_s, '
        f"padding_share FROM sft_metrics WHERE sft_run = '{cfg.name}' ORDER BY step\""
    )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sft",
        help="fine-tune a causal LM on a run's table with Ray Train (m1's SFT recipe)",
        description=(
            "Fine-tune on a run's curated/m23k/m1k table (or any Parquet / HF dataset with prompt, reasoning "
            "and answer columns) with a transformers Trainer inside Ray Train. Checkpoints (HF format) go to "
            "RUN_DIR/sft/NAME/train/, per-step metrics to the sft_metrics table, the loss curve to "
            "RUN_DIR/sft/NAME/loss.png. See curation/configs/sft_m1.yaml (the m1 preset)."
        ),
    )
    p.add_argument("config", help="SFT config YAML (e.g. curation/configs/sft_m1.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--force", action="store_true", help="delete the run's checkpoints and start over")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config key (dotted), e.g. train.max_steps=20",
    )
    p.set_defaults(func=cmd_sft)
    return p
