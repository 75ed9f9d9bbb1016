"""bench/gpu_check.py --smoke: the GPU readiness script keeps working without a GPU (CPU, tiny shapes).

It runs in a fresh interpreter, as on the device image: that image has torch and transformers but no Ray or
vLLM, so the script must not import them. Under a minute on a quiet 2-core machine; the bound below leaves
room for a busy one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_on_cpu_without_ray_or_vllm(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] == "cpu"
    assert result["imported_ray_or_vllm"] == []  # not importable on the device image
    cases = {(c["size"], c["packing"]) for c in result["train"]}
    assert cases == {("smoke", False), ("smoke", True)}
    for case in result["train"]:
        assert case["steps_timed"] >= 1 and case["tokens_per_s"] > 0 and case["final_loss"] > 0
    packed = next(c for c in result["train"] if c["packing"])
    assert packed["examples_per_step"] > 1  # packing put several examples into one row
    assert result["generate"][0]["tokens_per_s"] > 0
    assert result["wall_s"] < 120
