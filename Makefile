# Two commands on a fresh machine:  `make demo` (set up + the main job)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

# the main job: char-level Shakespeare on the CPU recipe, then samples from it
demo: setup
	$(PY) prepare.py shakespeare_char
	$(PY) train.py config/train_shakespeare_char_cpu.py
	$(PY) sample.py --out_dir=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3 --max_new_tokens=300

test: setup
	WANDB_MODE=disabled $(PY) -m pytest -q tests

clean:
	rm -rf out-* data/*/ $(VENV)
