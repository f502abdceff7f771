# The two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cion-ray-installed
export RAY_USAGE_STATS_ENABLED := 0
export YOLO_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all venv clean-demo

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip check
	@touch $(STAMP)

venv: $(STAMP)

## demo: generate the synthetic world and run the pipeline on it (outputs in runs/demo)
demo: $(STAMP)
	$(PY) jobs/demo.py --out runs/demo

## test: the default test suite (slow tests excluded; `make test-all` runs them too)
test: $(STAMP)
	$(PY) -m pytest

test-all: $(STAMP)
	$(PY) -m pytest -m ""

clean-demo:
	rm -rf runs/demo
