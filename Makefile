# `make test` creates (or reuses) .venv, installs the requirements, runs `make lint`, then the tests.
# `make demo` runs the whole method offline on the synthetic data and prints the comparison table.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY ?= $(VENV)/bin/python
INSTALL ?= install  # set empty to use an interpreter that already has the requirements (PY=...)

.PHONY: test lint install clean pretrain demo demo-quick paper gpu-check FORCE

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

# ruff's settings (100 characters, the rule set) are in pyproject.toml.
lint: install
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache

# --- Stage 0: the stand-ins for the pretrained models the paper is given, made once and shipped in
# stage0/ (bf16 safetensors + the tokenizer they read with). `make pretrain` regenerates them.
DATA ?= data/shapes
STAGE0 ?= stage0
PRETRAIN_WORLD ?= data/pretrain_world
PRETRAIN_RUNS ?= runs/pretrain
VIT_STEPS ?= 1500
VIT_SMALL_STEPS ?= 1000
TINY_LM_STEPS ?= 1200
LARGE_LM_STEPS ?= 450

pretrain: $(INSTALL)
	$(PY) -m stage0.synthetic --out $(DATA)
	$(PY) -m stage0.synthetic --out $(PRETRAIN_WORLD) --seed 1 --train-images 10000 --train-videos 2 --val-videos 2 --test-videos 2
	$(PY) -m stage0.pretrain vit --data $(PRETRAIN_WORLD) --out-dir $(PRETRAIN_RUNS)/vit --steps $(VIT_STEPS) --batch-size 64 --lr 2e-3 --warmup-steps 100 --eval-every 250 --overwrite true
	$(PY) -m stage0.pretrain vit --data $(PRETRAIN_WORLD) --out-dir $(PRETRAIN_RUNS)/vit_small --vit-preset toy-small --steps $(VIT_SMALL_STEPS) --batch-size 64 --lr 2e-3 --warmup-steps 100 --eval-every 250 --overwrite true
	$(PY) -m stage0.pretrain lm --data $(DATA) --out-dir $(PRETRAIN_RUNS)/tiny_lm --lm-preset toy-tiny --steps $(TINY_LM_STEPS) --overwrite true
	$(PY) -m stage0.pretrain lm --data $(DATA) --out-dir $(PRETRAIN_RUNS)/large_lm --lm-preset toy-large --steps $(LARGE_LM_STEPS) --overwrite true
	for part in vit vit_small tiny_lm large_lm; do $(PY) -m stage0.pretrain export --run $(PRETRAIN_RUNS)/$$part --out $(STAGE0)/$$part.safetensors || exit 1; done
	cp $(DATA)/tokenizer.model $(STAGE0)/tokenizer.model

# --- The demo: from the shipped stand-ins, stage 1, stage 2 for both adapters, evaluation, diagnostics.
# Each stage is a file target (its `done` marker) with its inputs as prerequisites: the data, the
# stage-0 files, the code it runs, and a file holding its flags (rewritten only when they change).
# So `make demo` reruns only what is downstream of a change, and an interrupted stage resumes.
RUNS ?= runs/demo
DATA_FLAGS ?=
STAGE1_STEPS ?= 400
STAGE2_STEPS ?= 400
EVAL_EVERY ?= 50
EVAL_LIMIT ?= 300
TRAIN_FLAGS ?=
FROZEN = --vit $(STAGE0)/vit.safetensors --lm $(STAGE0)/large_lm.safetensors
ifdef OMP_NUM_THREADS
export OMP_NUM_THREADS
endif
# The code each stage runs (support/ whole: the shared readers, checkpoints and flags).
MODEL_CODE = attention.py vit.py palm_decoder.py resampler.py vlm.py $(wildcard support/*.py)
TRAIN_CODE = $(MODEL_CODE) data.py trainer.py
EVAL_CODE = $(MODEL_CODE) data.py evaluate.py $(wildcard evaluation/*.py) stage0/scenes.py
STAGE1_FLAGS = --data $(DATA) --vit $(STAGE0)/vit.safetensors --tiny-lm $(STAGE0)/tiny_lm.safetensors --steps $(STAGE1_STEPS) $(TRAIN_FLAGS)
STAGE2_FLAGS = --data $(DATA) $(FROZEN) --steps $(STAGE2_STEPS) --eval-every $(EVAL_EVERY) $(TRAIN_FLAGS)
EVAL_FLAGS = --data $(DATA) --limit $(EVAL_LIMIT)
# where the demo's pictures go: the sheet of test items (show.png) and the attention maps
DEMO_PICTURES ?= docs
# $(call flags_file,FLAGS): keep $@ holding FLAGS, touching it only when they change.
flags_file = @mkdir -p $(@D); printf '%s\n' '$(1)' | cmp -s - $@ || printf '%s\n' '$(1)' > $@
# $(start): a stage resumes the run it was interrupted in when nothing it depends on has changed
# since that run started; otherwise it starts over.
start = mkdir -p $(@D) && mode="--overwrite true" && if [ -f $(@D)/checkpoint.pt ] && [ -f $(@D)/started ] \
	&& [ -z "$$(find $^ -newer $(@D)/started)" ]; then mode="--resume true"; fi && touch $(@D)/started

$(RUNS)/flags/%: FORCE
	$(call flags_file,$($*))
FORCE:

$(DATA)/dataset.json: stage0/synthetic.py stage0/world.py stage0/captions.py support/writers.py $(STAGE0)/tokenizer.model $(RUNS)/flags/DATA_FLAGS | $(INSTALL)
	$(PY) -m stage0.synthetic --out $(DATA) --tokenizer $(STAGE0)/tokenizer.model $(DATA_FLAGS)

$(RUNS)/stage1/done: $(DATA)/dataset.json $(STAGE0)/vit.safetensors $(STAGE0)/tiny_lm.safetensors train_stage1.py $(TRAIN_CODE) $(RUNS)/flags/STAGE1_FLAGS
	$(start) && $(PY) train_stage1.py $(STAGE1_FLAGS) --out-dir $(@D) $$mode
	touch $@

$(RUNS)/stage2_vadapter/done: $(RUNS)/stage1/done $(STAGE0)/large_lm.safetensors train_stage2.py $(TRAIN_CODE) $(RUNS)/flags/STAGE2_FLAGS
	$(start) && $(PY) train_stage2.py --adapter vadapter --stage1 $(RUNS)/stage1 $(STAGE2_FLAGS) --out-dir $(@D) $$mode
	touch $@

$(RUNS)/stage2_perceiver/done: $(DATA)/dataset.json $(STAGE0)/vit.safetensors $(STAGE0)/large_lm.safetensors train_stage2.py $(TRAIN_CODE) $(RUNS)/flags/STAGE2_FLAGS
	$(start) && $(PY) train_stage2.py --adapter perceiver $(STAGE2_FLAGS) --out-dir $(@D) $$mode
	touch $@

$(RUNS)/results/done: $(RUNS)/stage2_vadapter/done $(RUNS)/stage2_perceiver/done $(EVAL_CODE) $(RUNS)/flags/EVAL_FLAGS
	$(PY) evaluate.py compare $(RUNS)/stage2_vadapter $(RUNS)/stage2_perceiver $(EVAL_FLAGS) --out $(@D)
	$(PY) evaluate.py diagnostics $(@D)/results.json $(EVAL_FLAGS) --vit $(STAGE0)/vit.safetensors \
		--large-lm $(STAGE0)/large_lm.safetensors --tiny-lm $(STAGE0)/tiny_lm.safetensors --stage1 $(RUNS)/stage1
	$(PY) evaluate.py show $(RUNS)/stage2_vadapter $(RUNS)/stage2_perceiver --data $(DATA) --attention --out $(DEMO_PICTURES)
	touch $@

# Stages that do not depend on each other (stage 1 and the perceiver) run side by side, one thread
# each: on 2 cores that does more work per second than one run on two threads.
DEMO_JOBS ?= 2
demo:
	@$(MAKE) --no-print-directory -j$(DEMO_JOBS) $(RUNS)/results/done $(if $(filter-out 1,$(DEMO_JOBS)),OMP_NUM_THREADS=1)
	@cat $(RUNS)/results/table.md

# A reduced demo for the test suite: same commands, tiny data and step counts.
QUICK_STAGE2_STEPS ?= 10
demo-quick:
	$(MAKE) demo DATA=$(RUNS)/data RUNS=$(RUNS) DEMO_PICTURES=$(RUNS)/pictures STAGE1_STEPS=10 STAGE2_STEPS=$(QUICK_STAGE2_STEPS) EVAL_EVERY=5 EVAL_LIMIT=8 \
		TRAIN_FLAGS="--batch-size 8 --eval-batches 1" \
		DATA_FLAGS="--train-images 40 --val-images 16 --test-images 8 --train-videos 16 --val-videos 8 --test-videos 4"

# --- make paper: the paper's tables at toy scale, each row over the seeds PAPER_SEEDS, each claim
# judged on the seeds' paired differences (python -m paper.tables run --help). TABLES picks them:
# 2 (the default: the paper's main claims, Table 2), or e.g. TABLES=2,3,4,13,stronger or all.
# Resumable: a run whose evaluation exists is skipped (one evaluated before the blank-image scores
# existed gets only those), an unfinished one resumes. Writes $(PAPER_OUT)/results.md and
# results.json. The stronger table needs $(STAGE0)/vit_small.safetensors.
TABLES ?= 2
PAPER_RUNS ?= runs/paper
PAPER_OUT ?= docs
PAPER_SEEDS ?= 1,2,3,4,5,6,7,8,9,10,11,12
PAPER_STAGE1_STEPS ?= 300
PAPER_STAGE2_STEPS ?= 400
PAPER_EVAL_EVERY ?= 25
PAPER_EVAL_LIMIT ?= 300
PAPER_RELIANCE_LIMIT ?= 128
PAPER_JOBS ?= 2

paper: $(INSTALL)
	$(PY) -m stage0.synthetic --out $(DATA) --tokenizer $(STAGE0)/tokenizer.model $(DATA_FLAGS)
	$(PY) -m paper.tables run --data $(DATA) --stage0 $(STAGE0) --runs $(PAPER_RUNS) --out $(PAPER_OUT) --seeds $(PAPER_SEEDS) \
		--stage1-steps $(PAPER_STAGE1_STEPS) --stage2-steps $(PAPER_STAGE2_STEPS) --eval-every $(PAPER_EVAL_EVERY) \
		--eval-limit $(PAPER_EVAL_LIMIT) --reliance-limit $(PAPER_RELIANCE_LIMIT) --jobs $(PAPER_JOBS) --train-flags="$(TRAIN_FLAGS)" \
		--tables $(TABLES)

# --- make gpu-check: the CUDA default (compiled, FlexAttention, bf16, torchrun) checked on one GPU in
# under 10 minutes, one PASS / FAIL line per check (python -m bench gpu-check --help). Without CUDA it
# says so and exits 0.
gpu-check: $(INSTALL)
	$(PY) -m bench gpu-check
