"""The evaluation part of the README's first command: a small budget sweep of the demo's tiny model.

A TINY-MODEL DEMONSTRATION: the model is random-init (or fine-tuned for a few steps on the demo's curated set),
so its accuracy says nothing about medicine; the point is the machinery (budgets, forcing, prefix reuse, scoring,
tables, plots, the report) running end to end in minutes on a laptop.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from curation.store.runstore import RunStore
from evaluation.config import load_eval_config
from evaluation.report import write_accuracy_outputs, write_report
from evaluation.sweep import run_eval

DEMO_CONFIG = "configs/eval_demo.yaml"
BANNER = (
    "TINY-MODEL DEMONSTRATION: the evaluated model is the demo's tiny random-init model; its accuracy measures "
    "nothing medical. The figures show the machinery (thinking budgets, forcing, scoring with INVALID counted)."
)


def demo_config_path() -> Path:
    return Path(str(files("curation").joinpath(DEMO_CONFIG)))


def run_demo_sweep(
    run_dir: str,
    model_dir: str,
    *,
    out_dir: str | None = None,
    budgets: list[int] | None = None,
    forcing: list[int] | None = None,
    model_name: str = "tiny",
    log: Any = print,
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on the held-out PubMedQA half into ``run_dir``; write the accuracy table, the plot and
    the HTML report. Returns the run summary plus the written paths (``table``, ``plots``, ``report``)."""
    cfg = load_eval_config(demo_config_path())
    model = cfg.models[0].model_copy(update={"model": str(model_dir), "name": model_name})
    update: dict[str, Any] = {"models": [model]}
    if budgets is not None:
        update["budgets"] = budgets
    if forcing is not None:
        update["forcing"] = forcing
    cfg = cfg.model_copy(update=update)
    summary = run_eval(cfg, run_dir, log=log)
    out = Path(out_dir) if out_dir else Path(RunStore(run_dir).root) / "eval"
    paths = write_accuracy_outputs(RunStore(run_dir, create=False), out, title_note=" (tiny-model demo)")
    report = write_report(run_dir, title="m1 demo run (tiny-model demonstration)", banner=BANNER)
    log(f"m1 eval demo: table {paths[0]}, plots {', '.join(str(p) for p in paths[1:])}, report {report}")
    return {**summary, "table": paths[0], "plots": paths[1:], "report": report}
