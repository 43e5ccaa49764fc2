# Two commands on a fresh machine:  `make demo` (set up + the main job)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-shakespeare test clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

# the main job: nano4M on 2 CPU cores. Renders CLEVR-like scenes and trains their tokenizers (if missing), trains
# the 4m CPU recipe, writes chained-generation PNGs and prints the any-to-any scorecard: all six directions, each
# against its prior or chance and the tokenizer bound (the object judge of caption->rgb is trained once per dataset).
CPU4M := out-nano4m-cpu
demo: setup
	@start=$$(date +%s); set -e; \
	test -f data/clevr/meta.json || $(PY) prepare.py clevr; \
	$(PY) train.py config/nano4m_cpu.py; \
	$(PY) sample.py --mode=chain --out_dir=$(CPU4M) --chain="caption->semseg->depth->rgb" --sample_idx=0 --num_samples=3; \
	$(PY) sample.py --mode=chain --out_dir=$(CPU4M) --chain="rgb->depth@temperature=0->normals@temperature=0->semseg@temperature=0" --sample_idx=0 --num_samples=3; \
	$(PY) sample.py --mode=chain --out_dir=$(CPU4M) --chain="caption->semseg->rgb@scheme=roar,steps=16" --caption="a large red metal cube in the middle left , a small cyan rubber sphere in the front right ."; \
	$(PY) sample.py --mode=chain --out_dir=$(CPU4M) --chain="rgb->caption@temperature=0->boxes@temperature=0" --sample_idx=0 --num_samples=3; \
	$(PY) eval.py --mode=scorecard --out_dir=$(CPU4M) --num_scenes=300; \
	echo "demo wall time: $$(( $$(date +%s) - start ))s on $$(nproc) cores"

# the first stage: char-level Shakespeare on the GPT CPU recipe, then samples from it
demo-shakespeare: setup
	$(PY) prepare.py shakespeare_char
	$(PY) train.py config/train_shakespeare_char_cpu.py
	$(PY) sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3 --max_new_tokens=300

test: setup
	WANDB_MODE=disabled $(PY) -m pytest -q tests

clean:
	rm -rf out-* data/*/ $(VENV)
