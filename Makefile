# Two commands on a fresh machine: `make demo` and `make test`. Everything else builds on them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch first, pinned: a bare `torch` requirement on a fresh venv would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-all wheel lint demo bench bench-issue17 bench-timing bench-gpu clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not gpu" -n 2 $(PYTEST_ARGS)

# Everything CPU can run, slow tests included (local Hub server, olah mirror, full recipe runs, wheel + demo).
test-all: lint
	HF_HUB_OFFLINE=1 RUN_SLOW=1 $(PY) -m pytest -m "not gpu" -n 2 $(PYTEST_ARGS)

# A wheel with its package data (recipes, card template, evaluate modules) under dist/.
wheel: $(STAMP)
	rm -rf dist build
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m hf_mpprune.demo --out mpprune-demo

bench: $(STAMP)
	mkdir -p benchmarks/out
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_analyze.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_minilm_oneshot.py --mode eval --out benchmarks/out/minilm_oneshot.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_digits_grid.py --seeds 0 1 2 --out benchmarks/out/digits_grid.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_digits_kn.py --seeds 0 1 2 --out benchmarks/out/digits_kn.json
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) benchmarks/bench_minilm_kn.py --seeds 0 1 2 --out benchmarks/out/minilm_kn.json
	$(MAKE) bench-issue17

# Issue 17: cost and quality against llm-compressor's SparseGPT (its own pinned venv, outside the repository),
# measured in the same run; then the scaling table. PEER_VENV defaults to ../peer-venv.
PEER_VENV ?= $(abspath ..)/peer-venv
bench-issue17: $(STAMP)
	mkdir -p benchmarks/out
	PEER_VENV=$(PEER_VENV) bash benchmarks/peer_venv.sh
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) benchmarks/bench_minilm_issue17.py --targets 0.5 0.6 0.7 2:4 --seeds 0 1 2 \
		--cells sparsegpt wanda mp-wanda mp-wanda+rec mp-sparsegpt cast cast+rec \
		--peer-venv $(PEER_VENV) --out benchmarks/out/issue17_minilm.json
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) benchmarks/bench_scaling.py --models vit-s bert-base vit-b vit-l vit-h --samples 16 \
		--out benchmarks/out/scaling.json
	for s in 0 1 2; do HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 PYTHONPATH=. $(PY) benchmarks/bench_cast_vitb.py \
		--mode full --images 32 --seed $$s --peer; done

# Issue 21 (item 5): fair timing against llm-compressor's SparseGPT — both sides warm in long-lived workers, ours / peer
# interleaved 3 times per cell (MiniLM 50/60/70 %/2:4, the peer fed one joined batch, one busy process; ViT-B/16 and
# ViT-L/16), then the thread-use A/B of the CG re-fit and the OpenMP region counts (load-independent). Timing: run
# it ALONE on a quiet machine. TIMING_ARGS: e.g. --corpus benchmarks/corpus/<calibration split>.
TIMING_ARGS ?=
bench-timing: $(STAMP)
	mkdir -p benchmarks/out
	PEER_VENV=$(PEER_VENV) bash benchmarks/peer_venv.sh
	HF_HUB_OFFLINE=1 $(PY) benchmarks/timing.py --models minilm vit-b vit-l --pairs 3 --peer-venv $(PEER_VENV) \
		$(TIMING_ARGS) --out benchmarks/out/timing.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_threads.py --repeats 5 --out benchmarks/out/threads.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/timing.py --models minilm --extras --pairs 1 --count-regions \
		--peer-venv $(PEER_VENV) $(TIMING_ARGS) --out benchmarks/out/timing_regions.json

clean:
	rm -rf $(VENV) mpprune-demo .pytest_cache .ruff_cache
