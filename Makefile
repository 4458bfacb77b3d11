# varjax — every target installs what it needs into .venv first.
# Python is pinned to 3.12 (jax >= 0.11 needs it); requirements.lock pins every wheel.
SHELL := /bin/bash
PYTHON_VERSION := 3.12
PYTHON ?= $(shell for p in python$(PYTHON_VERSION) $$HOME/.pyenv/versions/$(PYTHON_VERSION)*/bin/python$(PYTHON_VERSION) /usr/local/bin/python$(PYTHON_VERSION) /usr/bin/python$(PYTHON_VERSION); do \
	$$p -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(PYTHON_VERSION))))' >/dev/null 2>&1 && { echo $$p; break; }; done)
comma := ,
VENV := .venv
PY := $(VENV)/bin/python
export JAX_PLATFORMS ?= cpu
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Where built datasets are cached (TFDS data_dir); override with DATA_DIR=...
DATA_DIR ?= $(CURDIR)/data_cache
export VARJAX_DATA_DIR := $(DATA_DIR)
PYTEST_ARGS ?=
# Extras installed into .venv (a TPU VM: make install EXTRAS=dev,tpu).
EXTRAS ?= dev
# One stamp per set of extras: `make install EXTRAS=dev,tpu` after a plain install adds the
# TPU wheels instead of finding the plain stamp.
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install test test-slow demo study bench bench-accelerator sweep analyze notebooks lock clean help tpu-aot

help:
	@echo "make demo       main job on the embedded default dataset"
	@echo "make demo-hparams  lr x batch sweep at 3 sizes: lr_opt(N), sensitivity, B_crit (~6 min)"
	@echo "make test       fast test suite (slow tests: make test-slow)"
	@echo "make study      the reference study with held-out forecasts (docs/study.md, ~40 min)"
	@echo "make install    create $(VENV) and install varjax + analysis (idempotent)"
	@echo "make sweep SWEEP=sweeps/x.yaml [BACKEND=local|lanes|ray|tpu] [RUNS=a,b] [LIMIT=K] [DRY_RUN=1]"
	@echo "make bench | analyze RUNS=... | notebooks"

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "error: Python $(PYTHON_VERSION) not found; install it or pass PYTHON=/path/to/python$(PYTHON_VERSION)" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[$(EXTRAS)]'
	@touch $@

# libtpu, to compile the TPU kernels ahead of time on any machine (varjax/aot/tpu.py,
# tests/test_kernel_lowering.py). The version jax[tpu]==0.12.0.1 pins; kept out of
# site-packages because an importable libtpu makes every JAX start probe for TPUs.
LIBTPU_VERSION := 0.0.50.1
LIBTPU := $(VENV)/libtpu
LIBTPU_STAMP := $(LIBTPU)/.installed-$(LIBTPU_VERSION)
export VARJAX_LIBTPU_DIR ?= $(CURDIR)/$(LIBTPU)

$(LIBTPU_STAMP): | $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --upgrade \
	  --target $(LIBTPU) libtpu==$(LIBTPU_VERSION)
	@touch $@

# Compile the attention kernels for TPU v4/v5e/v5p/v6e without a TPU, or with
# TPU_AOT_ARGS="--train-step --depth 16 --batch 256 --mesh 1,4,1 --topologies v5p:2x2x1"
# a whole sharded training step, with its HBM per chip (docs/kernels.md).
tpu-aot: install $(LIBTPU_STAMP)
	PYTHONPATH=$(LIBTPU) $(PY) -m varjax.aot.tpu $(TPU_AOT_ARGS)

# Re-pin every transitive version from the current venv (run after changing setup.cfg).
lock: install
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

# Two pytest-xdist workers (one per core here), a test file per worker at a time so module
# fixtures are built once; a persistent XLA compilation cache under .cache/jax-tests is
# shared by the workers and the subprocesses they start (tests/conftest.py). The slowest
# tests are listed at the end. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: install $(LIBTPU_STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_PARALLEL) --durations=15 $(PYTEST_ARGS)

test-slow: install $(LIBTPU_STAMP)
	$(PY) -m pytest -m slow $(PYTEST_PARALLEL) --durations=15 $(PYTEST_ARGS)

# Main job on the embedded default: dataset -> tokenizer -> token pyramids (validation, and
# a prefix of the stream of distinct crops for training) -> the demo sweep (sweeps/demo.yaml:
# an IsoFLOP design bracketing the compute-optimal D/N at 3 budgets, into runs/demo) -> the
# repeated-data runs (sweeps/demo-repeat.yaml: 2 sizes x 2 data subsets, runs/demo-repeat)
# -> sample quality of the largest budget's runs, the sampling frontier and the learning-curve
# backtest (two at a time: make -j2) -> the report (reports/demo/report.md).
# Every stage is cached: a second run only checks and prints.
DEMO_TOKENIZER := runs/tokenizers/tokenizer-tiny32
DEMO_TOKENS := $(DATA_DIR)/tokens/embedded32-tiny32
DEMO_FEATURES := runs/features/embed32cnn
# Crops of the stream to encode: the demo's longest run (d2w8-C2e11, 5,131,680 tokens =
# 171,056 images) rounded up to whole chunks of 2,048, so no run repeats a crop
# (tests/test_facts.py checks this against sweeps/demo.yaml).
DEMO_STREAM_EXAMPLES := 172032
# fd_embed32cnn of every run of the largest budget (mirrors sweeps/demo.yaml).
DEMO_FD_RUNS := $(foreach w,8 16 24 32 40 48,runs/demo/d2w$(w)-C2e11-s0/eval_samples.png)
# The sweep's runs train two at a time (one CPU each): a tiny model's step is bound by
# per-op overhead on one core, so two runs finish in about the time of one.
DEMO_BACKEND ?= ray
# Persistent XLA compilation cache: a cool-down run compiles the programs of its trunk.
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.cache/jax
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS ?= 0.3
demo: install
	@start=$$(date +%s); \
	$(VENV)/bin/varjax data build --dataset embedded32 && \
	$(VENV)/bin/varjax data preview --dataset embedded32 --out reports/demo/dataset.png && \
	$(MAKE) --no-print-directory $(DEMO_TOKENIZER)/params.msgpack && \
	$(VENV)/bin/varjax tokenizer preview --tokenizer $(DEMO_TOKENIZER) --out reports/demo/tokenizer.png && \
	$(VENV)/bin/varjax tokenize --tokenizer $(DEMO_TOKENIZER) --split train --out $(DEMO_TOKENS)/train && \
	$(VENV)/bin/varjax tokenize --tokenizer $(DEMO_TOKENIZER) --split validation --out $(DEMO_TOKENS)/validation && \
	$(VENV)/bin/varjax tokenize --tokenizer $(DEMO_TOKENIZER) --split stream \
	  --num-examples $(DEMO_STREAM_EXAMPLES) --out $(DEMO_TOKENS)/stream && \
	$(PY) -m sweeps run sweeps/demo.yaml --backend $(DEMO_BACKEND) && \
	$(PY) -m sweeps run sweeps/demo-repeat.yaml --backend $(DEMO_BACKEND) && \
	$(MAKE) --no-print-directory -j2 --output-sync=target reports/demo/report.md && \
	cat reports/demo/summary.txt && \
	echo "demo: runs in runs/demo; report, plots and forecasts in reports/demo/report.md" && \
	echo "demo: done in $$(( $$(date +%s) - start )) s"

# The feature network for fd_embed32cnn (about 2 min, once) and a run's distance
# (K = 1,024 samples; redone only when the run's params change).
$(DEMO_FEATURES)/params.msgpack:
	$(VENV)/bin/varjax eval features train --out $(DEMO_FEATURES)

# The fit, backtest, validity checklist and plots; forecasts (loss and fd_embed32cnn, 95%
# intervals) at the N and D of the study's held-out runs (sweeps/study-heldout.yaml, measured
# in docs/study.md) and the plan for 8e11 FLOPs, 4x the largest budget; what repeating data
# cost (the data-constrained law on runs/demo + runs/demo-repeat); the learning-curve
# backtest; the sampling frontier. Redone when a run finished (registry.jsonl) or was measured.
DEMO_FORECAST := --at N=5.68e4,D=2.98e6 --at N=1.14e5,D=1.55e6 --at N=2.87e5,D=6.48e5 --flops 8e11
DEMO_SAMPLING := reports/demo/sampling.csv
DEMO_CURVES := reports/demo/curve_backtest.json
reports/demo/report.md: runs/demo/registry.jsonl runs/demo-repeat/registry.jsonl $(DEMO_FD_RUNS) \
  $(DEMO_SAMPLING) $(DEMO_CURVES)
	$(PY) -m analysis report --runs runs/demo --out reports/demo $(ANALYZE_ARGS) \
	  --fid-col fd_embed32cnn $(DEMO_FORECAST) --repeated runs/demo-repeat \
	  --curve-backtest $(DEMO_CURVES) --sampling-table $(DEMO_SAMPLING) > reports/demo/summary.txt

# Learning-curve backtest: every demo run's final loss forecast from its first 30% (the
# fraction an early stop would use; docs/analysis.md), MAPE per method.
$(DEMO_CURVES): runs/demo/registry.jsonl
	@mkdir -p $(dir $@)
	$(PY) -m analysis extrapolate --backtest runs/demo --fractions 0.3 --json > $@.tmp && mv $@.tmp $@

# The sampling frontier (issue 19): the largest model (d2w48) as drafter with the smallest
# (d2w8) as refiner at every switch scale (0 = d2w8 alone; the drafter alone is its plain
# row), and the drafter's best-of-K for K = 2, 4, 8, each on the fd protocol of eval fid
# (1,024 images). The verifier is not the fd network: a CNN of another architecture (16-32-64
# channels), seed and length, trained on the same images (docs/eval.md says what that
# leaves).
DEMO_VERIFIER := runs/features/verify32cnn
DEMO_DRAFTER := runs/demo/d2w48-C2e11-s0
DEMO_REFINER := runs/demo/d2w8-C2e11-s0
$(DEMO_SAMPLING): $(DEMO_DRAFTER)/params.msgpack $(DEMO_REFINER)/params.msgpack \
  $(DEMO_FEATURES)/params.msgpack $(DEMO_VERIFIER)/params.msgpack
	@mkdir -p $(dir $@)
	$(VENV)/bin/varjax eval sampling --runs $(DEMO_DRAFTER) \
	  $(foreach k,0 1 2 3,--refiner $(DEMO_REFINER) --switch-scale $(k)) \
	  --best-of 2 --best-of 4 --best-of 8 --verifier $(DEMO_VERIFIER) \
	  --feature-net $(DEMO_FEATURES) --out $@

$(DEMO_VERIFIER)/params.msgpack:
	$(VENV)/bin/varjax eval features train --out $(DEMO_VERIFIER) --name verify32cnn \
	  --widths 16,32,64 --seed 1 --epochs 3

runs/demo/%/eval_samples.png: runs/demo/%/params.msgpack $(DEMO_FEATURES)/params.msgpack
	$(VENV)/bin/varjax eval fid --run $(dir $@) --feature-net $(DEMO_FEATURES)

# The reference study (docs/study.md; not part of the demo, about 40 min on 2 cores after
# make demo): sweeps/study.yaml (the demo's design plus a 4e11-FLOP budget) and the
# held-out runs of sweeps/study-heldout.yaml (8e11 FLOPs, one model larger than any fitted),
# then the report with the held-out forecasts against the measured values.
STUDY_TOKENS := $(DATA_DIR)/tokens/embedded32-tiny32-study
# The study's longest run (d2w8-C4e11, 10,263,360 tokens = 342,112 images) in whole chunks.
STUDY_STREAM_EXAMPLES := 344064
STUDY_FD_RUNS := $(foreach w,8 16 24 32 40 48 64,runs/study/d2w$(w)-C4e11-s0/eval_samples.png) \
  $(foreach w,32 48 80,runs/study-heldout/d2w$(w)-C8e11-s0/eval_samples.png)
STUDY_FORECAST := --flops 8e11
study: demo
	@start=$$(date +%s); \
	$(VENV)/bin/varjax tokenize --tokenizer $(DEMO_TOKENIZER) --split validation --out $(STUDY_TOKENS)/validation && \
	$(VENV)/bin/varjax tokenize --tokenizer $(DEMO_TOKENIZER) --split stream \
	  --num-examples $(STUDY_STREAM_EXAMPLES) --out $(STUDY_TOKENS)/stream && \
	$(PY) -m sweeps run sweeps/study.yaml --backend $(DEMO_BACKEND) && \
	$(PY) -m sweeps run sweeps/study-heldout.yaml --backend $(DEMO_BACKEND) && \
	$(MAKE) --no-print-directory reports/study/report.md && cat reports/study/summary.txt && \
	echo "study: report with held-out forecasts in reports/study/report.md" && \
	echo "study: done in $$(( $$(date +%s) - start )) s"

reports/study/report.md: runs/study/registry.jsonl runs/study-heldout/registry.jsonl $(STUDY_FD_RUNS)
	mkdir -p reports/study
	$(PY) -m analysis report --runs runs/study --out reports/study $(ANALYZE_ARGS) \
	  --fid-col fd_embed32cnn --heldout runs/study-heldout $(STUDY_FORECAST) > reports/study/summary.txt

runs/study/%/eval_samples.png: runs/study/%/params.msgpack $(DEMO_FEATURES)/params.msgpack
	$(VENV)/bin/varjax eval fid --run $(dir $@) --feature-net $(DEMO_FEATURES)

runs/study-heldout/%/eval_samples.png: runs/study-heldout/%/params.msgpack $(DEMO_FEATURES)/params.msgpack
	$(VENV)/bin/varjax eval fid --run $(dir $@) --feature-net $(DEMO_FEATURES)

# The demo tokenizer (about 5 min on 2 cores); retrained only when its params are missing.
$(DEMO_TOKENIZER)/params.msgpack:
	$(VENV)/bin/varjax tokenizer train --preset vqvae-tiny32 --out-dir $(dir $(DEMO_TOKENIZER))

# The hparams demo (issue 17; sweeps/demo-hparams.yaml says why each number): 3 sizes x 5
# lrs x 3 batch sizes at one token budget, with the gradient noise scale logged, as lanes
# (the 5 lrs of a size and batch are one program) in two processes, one core each: one on
# the largest size's runs, the other on the two smaller sizes' (about equal work; disjoint
# lists, as a lanes process that meets a run the other finished records it failed).
# Then lr_opt(N) and batch_opt(N) (the N-only form at one D) with the leave-largest-out
# backtest, the lr sensitivity per size, the critical batch per size and the report
# (reports/demo-hparams/report.md). Builds the demo's dataset, tokenizer, validation and
# stream tokens when missing (each cached). Prints its wall time.
.PHONY: demo-hparams
DEMO_HPARAMS_RUNS := runs/demo-hparams
# The spec's run names for widths $(1) (sweeps/demo-hparams.yaml: its lrs and batch sizes).
demo_hparams_runs = $(foreach w,$(1),$(foreach b,8 16 32,$(foreach lr,0.002 0.004 0.008 0.016 0.032,d2w$(w)-D5e5-s0-lr$(lr)-b$(b))))
demo-hparams: install
	@start=$$(date +%s); \
	$(VENV)/bin/varjax data build --dataset embedded32 && \
	$(MAKE) --no-print-directory $(DEMO_TOKENIZER)/params.msgpack && \
	$(VENV)/bin/varjax tokenize --tokenizer $(DEMO_TOKENIZER) --split validation --out $(DEMO_TOKENS)/validation && \
	$(VENV)/bin/varjax tokenize --tokenizer $(DEMO_TOKENIZER) --split stream \
	  --num-examples $(DEMO_STREAM_EXAMPLES) --out $(DEMO_TOKENS)/stream && \
	mkdir -p $(DEMO_HPARAMS_RUNS) reports/demo-hparams && \
	{ $(PY) -m sweeps run sweeps/demo-hparams.yaml --backend lanes --runs "$(call demo_hparams_runs,48)" \
	    > reports/demo-hparams/sweep-largest.log 2>&1 & largest=$$!; \
	  $(PY) -m sweeps run sweeps/demo-hparams.yaml --backend lanes --runs "$(call demo_hparams_runs,8 24)"; \
	  rest=$$?; \
	  wait $$largest || { cat reports/demo-hparams/sweep-largest.log; false; }; \
	  test $$rest = 0; } && \
	$(PY) -m sweeps run sweeps/demo-hparams.yaml --backend lanes > /dev/null && \
	echo "demo-hparams: sweep done at $$(( $$(date +%s) - start )) s" && \
	$(PY) -m analysis.hparams_report --runs $(DEMO_HPARAMS_RUNS) --out reports/demo-hparams && \
	echo "demo-hparams: runs in $(DEMO_HPARAMS_RUNS); report in reports/demo-hparams/report.md" && \
	echo "demo-hparams: done in $$(( $$(date +%s) - start )) s"

# Each benchmark prints its own side-by-side ratios.
bench: install
	$(PY) benchmarks/fit_speed.py
	$(PY) benchmarks/lanes.py
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/attention.py --builds --quick
	$(VENV)/bin/varjax bench train --model var-d4 --patch-nums 1,2,3,4,5,6,8 --batch 32 --json
	$(PY) benchmarks/train_step_vs_ref.py
	PYTHON=$(PY) bash benchmarks/accelerator.sh --quick --out reports/accelerator-quick

# On a GPU machine (docs/benchmarks.md): make bench-accelerator [VAR_ARCHIVE=official-var.tar.gz]
bench-accelerator:
	bash benchmarks/accelerator.sh $(if $(VAR_ARCHIVE),--var-archive $(VAR_ARCHIVE)) --out reports/accelerator

# make sweep SWEEP=sweeps/x.yaml [BACKEND=local|lanes|ray|tpu] [RUNS=a,b] [LIMIT=K]
#            [DRY_RUN=1] [TPU_LAUNCHER=gcloud|xpk] [RAY_ADDRESS=host:port] [OUT_DIR=dir]
# Idempotent: finished runs are skipped, interrupted ones resume, failed ones are retried
# (RUNS=name retries one alone). `python -m sweeps list SPEC` shows the runs and status.
SWEEP ?= sweeps/demo.yaml
BACKEND ?= local
TPU_LAUNCHER ?= gcloud
sweep: install
	$(PY) -m sweeps run $(SWEEP) --backend $(BACKEND) --launcher $(TPU_LAUNCHER) \
	  $(if $(RUNS),--runs $(RUNS)) $(if $(LIMIT),--limit $(LIMIT)) $(if $(DRY_RUN),--dry-run) \
	  $(if $(OUT_DIR),--out-dir $(OUT_DIR))

# make analyze RUNS=runs/demo [OUT=reports/demo] [ANALYZE_ARGS="--d-col tokens ..."]
ANALYZE_ARGS ?= --d-col tokens --bootstrap 200
analyze: install
	@test -n "$(RUNS)" || { echo "usage: make analyze RUNS=DIR [OUT=DIR]" >&2; exit 2; }
	$(PY) -m analysis report --runs $(RUNS) --out $(or $(OUT),reports/$(notdir $(RUNS))) $(ANALYZE_ARGS)

# Executes notebooks/*.ipynb headless into reports/notebooks (VARJAX_RUNS=DIR for a registry).
notebooks: install
	cd notebooks && ../$(PY) run.py --out ../reports/notebooks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
