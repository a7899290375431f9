# `make test` creates (or reuses) .venv, installs the requirements and runs the tests.
# `make demo` runs the whole method offline on the synthetic data and prints the comparison table.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY ?= $(VENV)/bin/python
INSTALL ?= install  # set empty to use an interpreter that already has the requirements (PY=...)

.PHONY: test install clean demo demo-quick ablation

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache

# --- The demo: stage 0 (data, tokenizer, pretraining), stage 1, stage 2 for both adapters, evaluation.
DATA ?= data/shapes
RUNS ?= runs/demo
DATA_FLAGS ?=
PRETRAIN_STEPS ?= 600
STAGE1_STEPS ?= 600
STAGE2_STEPS ?= 600
EVAL_EVERY ?= 50
EVAL_LIMIT ?= 0
TRAIN_FLAGS ?=
FROZEN = --vit $(RUNS)/pretrain/vit --lm $(RUNS)/pretrain/large_lm
STAGE2 = --data $(DATA) $(FROZEN) --steps $(STAGE2_STEPS) --eval-every $(EVAL_EVERY) $(TRAIN_FLAGS)

demo: $(INSTALL)
	$(PY) synthetic.py --out $(DATA) $(DATA_FLAGS)
	$(PY) pretrain.py vit --data $(DATA) --out-dir $(RUNS)/pretrain/vit --steps $(PRETRAIN_STEPS) $(TRAIN_FLAGS)
	$(PY) pretrain.py lm --data $(DATA) --out-dir $(RUNS)/pretrain/tiny_lm --lm-preset toy-tiny --steps $(PRETRAIN_STEPS) $(TRAIN_FLAGS)
	$(PY) pretrain.py lm --data $(DATA) --out-dir $(RUNS)/pretrain/large_lm --lm-preset toy-large --steps $(PRETRAIN_STEPS) $(TRAIN_FLAGS)
	$(PY) train_stage1.py --data $(DATA) --vit $(RUNS)/pretrain/vit --tiny-lm $(RUNS)/pretrain/tiny_lm --out-dir $(RUNS)/stage1 --steps $(STAGE1_STEPS) $(TRAIN_FLAGS)
	$(PY) train_stage2.py --adapter vadapter --stage1 $(RUNS)/stage1 --out-dir $(RUNS)/stage2_vadapter $(STAGE2)
	$(PY) train_stage2.py --adapter perceiver --out-dir $(RUNS)/stage2_perceiver $(STAGE2)
	$(PY) evaluate.py compare $(RUNS)/stage2_vadapter $(RUNS)/stage2_perceiver --data $(DATA) --limit $(EVAL_LIMIT) --out $(RUNS)/results

# A reduced demo for the test suite: same commands, tiny data and step counts.
demo-quick:
	$(MAKE) demo DATA=$(RUNS)/data RUNS=$(RUNS) PRETRAIN_STEPS=10 STAGE1_STEPS=10 STAGE2_STEPS=10 EVAL_EVERY=5 EVAL_LIMIT=8 \
		TRAIN_FLAGS="--batch-size 8 --eval-batches 1" \
		DATA_FLAGS="--train-images 40 --val-images 16 --test-images 8 --train-videos 16 --val-videos 8 --test-videos 4"

# The paper's other ablation rows, after `make demo`: the tiny LM language-pretrained only or
# random, and shallower / deeper perceivers, with the same budget.
ablation: $(INSTALL)
	$(PY) train_stage2.py --adapter vadapter --adapter-init lm --tiny-lm $(RUNS)/pretrain/tiny_lm --out-dir $(RUNS)/stage2_vadapter_lm $(STAGE2)
	$(PY) train_stage2.py --adapter vadapter --adapter-init random --tiny-lm $(RUNS)/pretrain/tiny_lm --out-dir $(RUNS)/stage2_vadapter_random $(STAGE2)
	$(PY) train_stage2.py --adapter perceiver --perceiver-depth 1 --out-dir $(RUNS)/stage2_perceiver_d1 $(STAGE2)
	$(PY) train_stage2.py --adapter perceiver --perceiver-depth 3 --out-dir $(RUNS)/stage2_perceiver_d3 $(STAGE2)
	$(PY) evaluate.py compare $(RUNS)/stage2_vadapter $(RUNS)/stage2_vadapter_lm $(RUNS)/stage2_vadapter_random \
		$(RUNS)/stage2_perceiver $(RUNS)/stage2_perceiver_d1 $(RUNS)/stage2_perceiver_d3 --data $(DATA) --limit $(EVAL_LIMIT) --out $(RUNS)/ablation
