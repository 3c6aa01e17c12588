# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   # the main job: pre-train, evaluate, detect, tables and plots on the embedded data
#   make test   # the test suite (what CI runs)
# The first call creates .venv and installs the pinned requirements, detectron2 (CPU path) and the
# Fashion-MNIST data set and pdflatex (the LaTeX tables are compiled in a test); later calls reuse them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-quick speed test test-fast mutation setup clean-demo

$(STAMP): requirements.txt requirements-detectron2.txt scripts/install_detectron2.sh scripts/get_fashion_mnist.sh \
		scripts/install_latex.sh scripts/apt_install.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -r requirements.txt
	bash scripts/install_detectron2.sh $(PY)
	bash scripts/get_fashion_mnist.sh
	bash scripts/install_latex.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m evaluate demo --out results/demo

demo-quick: $(STAMP)
	$(PY) -m evaluate demo --quick --out results/demo-quick

# Times one demo pre-training step and says which of the two known 2-core machine kinds this is (README).
speed: $(STAMP)
	$(PY) benchmarks/machine_speed.py

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Mutation testing of the number-producing modules, each with only its own tests (docs/testing.md);
# about 20 minutes on 2 cores, not part of CI. `make mutation MODULES=pretrain/losses.py` for one.
mutation: $(STAMP)
	PY=$(PY) bash scripts/mutation.sh $(MODULES)

clean-demo:
	rm -rf results/demo results/demo-quick
