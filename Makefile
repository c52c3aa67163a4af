# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m toolchain.env
	touch $(STAMP)

DEMO := build/demo
FIXTURE := tests/fixtures/digits_mbv2.onnx

# The main job on the bundled model: what fleetc sees, one device compiled under a latency
# budget, then a small fleet (host + two aarch64 devices known by few measurements).
demo: $(STAMP)
	$(VENV)/bin/fleetc inspect $(FIXTURE)
	mkdir -p $(DEMO)
	$(PY) -c "import numpy as n; d = n.load('tests/fixtures/digits_calib.npz'); \
	  n.savez_compressed('$(DEMO)/calib64.npz', inputs=d['inputs'][:64], labels=d['labels'][:64])"
	$(VENV)/bin/fleetc compile $(FIXTURE) --target host-ort-1t --latency-ms 1.2 \
	  --max-accuracy-drop 1.0 --calib $(DEMO)/calib64.npz -o $(DEMO)/host
	# the stand-in's fastest of 3 rounds: one round varied up to 3x per design between runs
	$(VENV)/bin/fleetc profile --probe --subset fingerprint --target host-ort --repeats 7 \
	  --rounds 3 -o $(DEMO)/standin.csv
	$(VENV)/bin/fleetc fleet examples/demo/fleet.toml -o $(DEMO)/fleet --jobs 2
	@echo "demo outputs: $(DEMO)/host (compile) and $(DEMO)/fleet (fleet.json, one folder per device)"
	@echo "fleet page: $(abspath $(DEMO))/fleet/fleet.html"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint: $(STAMP)
	$(VENV)/bin/ruff check toolchain passes targets tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
