# Two commands on a fresh machine: `make demo` and `make test`. Everything else builds on them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch first, pinned: a bare `torch` requirement on a fresh venv would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv venv-timm test test-timm test-all wheel lint demo bench bench-issue17 bench-evidence bench-issue21 bench-timing bench-decoder corpus bench-gpu gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# timm imports torchvision, and PyPI's x86-64 torchvision wheels are CUDA builds that fail to import beside the CPU
# torch 2.13.0 of .venv ("operator torchvision::nms does not exist"). The timm tests (tests/test_timm.py, marker
# `timm`) therefore run in their own venv with the matching CUDA builds (about 5.5 GB; they run on the CPU).
VENV_TIMM ?= .venv-timm
TIMM_TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
$(VENV_TIMM)/.installed: pyproject.toml
	test -x $(VENV_TIMM)/bin/python || $(PYTHON) -m venv $(VENV_TIMM)
	$(VENV_TIMM)/bin/python -m pip install -q --upgrade pip
	$(VENV_TIMM)/bin/python -m pip install -q $(TIMM_TORCH_SPEC)
	$(VENV_TIMM)/bin/python -m pip install -q -e ".[dev,timm]"
	touch $@

venv-timm: $(VENV_TIMM)/.installed

test-timm: $(VENV_TIMM)/.installed
	HF_HUB_OFFLINE=1 $(VENV_TIMM)/bin/python -m pytest -m timm -n 2 tests/test_timm.py $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow and not gpu" -n 2 $(PYTEST_ARGS)

# Everything CPU can run, slow tests included (local Hub server, olah mirror, full recipe runs, wheel + demo).
test-all: lint test-timm
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
	$(MAKE) bench-evidence

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

# Issues 21 / 22: the natural-text MiniLM tables (docstring corpus; benchmarks/RESULTS.md "Issues 21 / 22"): the
# selection run that chose the defaults, then the evaluation split with 3 calibration draws and paired bootstrap CIs.
# Quality only; ~2.5 h on 2 cores. Rows are saved after every cell and --resume skips the ones done.
EV := HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) benchmarks/evidence.py --threads 1 --resume
EV_BASE := wanda wanda+rec 'mp-wanda[beta=0]' 'mp-wanda[beta=0]+rec' mp-wanda mp-wanda+rec sparsegpt mp-sparsegpt cast cast+rec
EV_NEW := 'wanda+rec[owl]' 'wanda+rec[alpha]' 'wanda+rec[mp]' wanda+alps mp-wanda+alps cast+alps
EV_RIVALS := 'wanda[owl]' 'wanda[alpha]' 'sparsegpt[owl]' 'sparsegpt[alpha]' 'wanda+rec[owl]' 'wanda+rec[alpha]'
bench-evidence: $(STAMP)
	mkdir -p benchmarks/out
	$(EV) --split selection --targets 0.6 0.7 --draws 0 --out benchmarks/out/selection_minilm.json.gz \
		--cells wanda+rec 'wanda+rec[owl]' 'wanda+rec[alpha]' 'wanda+rec[mp]' mp-wanda+rec wanda+admm wanda+alps \
		wanda+dsnot+rec --compare 'wanda+rec[owl]:wanda+rec' 'wanda+rec[alpha]:wanda+rec' 'wanda+rec[mp]:wanda+rec' \
		'mp-wanda+rec:wanda+rec' 'wanda+alps:wanda+admm' 'wanda+alps:wanda+dsnot+rec' 'wanda+admm:wanda+dsnot+rec'
	$(EV) --cells $(EV_BASE) --targets 0.5 0.6 0.7 2:4 --draws 0 1 2 --out benchmarks/out/evidence_base.json.gz
	$(EV) --cells $(EV_NEW) --targets 0.6 0.7 2:4 --draws 0 1 2 --out benchmarks/out/evidence_new.json.gz
	$(EV) --cells $(EV_RIVALS) --targets 0.5 0.6 0.7 --draws 0 1 2 --out benchmarks/out/evidence_rivals.json.gz
	$(EV) --tables-only --merge benchmarks/out/evidence_base.json.gz benchmarks/out/evidence_new.json.gz \
		benchmarks/out/evidence_rivals.json.gz --out benchmarks/out/evidence_minilm.json.gz \
		--table benchmarks/out/evidence_minilm.md

# Issue 21, every table at once: the natural-text MiniLM tables, the digits-ViT allocation table (3 seeds, 1 KD
# epoch; ~100 min per seed at one thread) and the fair-timing tables (run the whole target ALONE on a quiet machine).
bench-issue21: bench-evidence
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_digits_alloc.py --seeds 0 1 2 --out benchmarks/out/digits_alloc.json \
		--md benchmarks/out/digits_alloc.md
	$(MAKE) bench-timing

# Rebuild the shipped natural-text corpus from the docstrings of the installed packages (benchmarks/corpus/).
corpus: $(STAMP)
	$(PY) benchmarks/build_corpus.py

# On a lent GPU (< 6 min): pytest -m gpu + the deploy benchmark (ViT-B/16 ± ToMe, BERT-base; batch 1/64/256; bf16
# dense vs 2:4), JSON + Markdown under benchmarks/out/gpu_check. GPU_PY: a Python whose torch has CUDA and that can
# import this checkout's dependencies (the CPU venv cannot drive a GPU). The CPU dry run is part of `make test`.
GPU_PY ?= python3
gpu-check:
	mkdir -p benchmarks/out
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(GPU_PY) benchmarks/gpu_check.py --out benchmarks/out/gpu_check

# Issue 21 (item 5): fair timing against llm-compressor's SparseGPT — both sides warm in long-lived workers, ours / peer
# interleaved 3 times per cell (MiniLM 50/60/70 %/2:4, the peer fed one joined batch, one busy process; ViT-B/16 and
# ViT-L/16), then the thread-use A/B of the CG re-fit and the OpenMP region counts (load-independent). Timing: run
# it ALONE on a quiet machine. TIMING_ARGS: e.g. --corpus benchmarks/corpus/<calibration split>.
TIMING_ARGS ?=
bench-timing: $(STAMP)
	mkdir -p benchmarks/out
	PEER_VENV=$(PEER_VENV) bash benchmarks/peer_venv.sh
	HF_HUB_OFFLINE=1 $(PY) benchmarks/timing.py --models minilm vit-b --pairs 3 --peer-venv $(PEER_VENV) \
		$(TIMING_ARGS) --out benchmarks/out/timing.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/timing.py --models vit-l --extras --pairs 3 --warm-batches 1 \
		--peer-venv $(PEER_VENV) --out benchmarks/out/timing_vitl.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_threads.py --repeats 5 --out benchmarks/out/threads.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/timing.py --models minilm --extras --pairs 1 --count-regions \
		--peer-venv $(PEER_VENV) $(TIMING_ARGS) --out benchmarks/out/timing_regions.json

# Issue 23: the small decoder (benchmarks/RESULTS.md "Issue 23"): build the natural-text corpus (scikit-learn's
# docstrings, split by module), train the ~2.4 M-parameter Llama on its train split (~6 min), prune it with every
# cell, control, rival allocation and llm-compressor's SparseGPT (3 calibration draws, perplexity with paired
# bootstrap CIs; ~1 h), then the fair-timing rows on random-init Llama shapes (run ALONE on a quiet machine).
DEC ?= $(HOME)/.cache/hf_mpprune/decoder
bench-decoder: $(STAMP)
	mkdir -p benchmarks/out
	PEER_VENV=$(PEER_VENV) bash benchmarks/peer_venv.sh
	test -d $(DEC)/corpus-sklearn || HF_HUB_OFFLINE=1 $(PY) benchmarks/decoder_data.py --package sklearn --out $(DEC)/corpus-sklearn
	test -f $(DEC)/llama-small/model.safetensors || HF_HUB_OFFLINE=1 $(PY) benchmarks/train_small_decoder.py \
		--corpus $(DEC)/corpus-sklearn --out $(DEC)/llama-small
	HF_HUB_OFFLINE=1 PYTHONPATH=. $(PY) benchmarks/bench_decoder.py --model $(DEC)/llama-small \
		--corpus $(DEC)/corpus-sklearn --seeds 0 1 2 --threads 1 --resume --out benchmarks/out/decoder.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/timing.py --models llama-60m llama-160m --extras --pairs 3 --warm-batches 1 \
		--peer-venv $(PEER_VENV) --out benchmarks/out/timing_llama.json
	PEER_VENV=$(PEER_VENV) HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_decoder_scaling.py \
		--models llama-60m llama-160m llama-410m llama-1b --methods mp-wanda+rec sparsegpt cast-2:4 peer-sparsegpt \
		--samples 16 --seq 512 --out benchmarks/out/decoder_scaling.json

clean:
	rm -rf $(VENV) $(VENV_TIMM) mpprune-demo .pytest_cache .ruff_cache
