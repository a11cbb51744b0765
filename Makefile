# Two commands do everything on a fresh machine:
#   make demo   build model.yaml, serve it, query every model over HTTP and gRPC, profile it
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test build clean golden

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-deps
	scripts/install-system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[all]"
	touch $(STAMP)

build: setup
	$(BIN)/tritonize build model.yaml

demo: setup
	$(BIN)/python scripts/demo.py

test: setup
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV)

# Regenerate the committed golden files (model_repo/ text files, tests/golden/) after an intended change.
golden: setup
	$(BIN)/tritonize build model.yaml --force
	rm -rf tests/golden/container
	$(BIN)/tritonize build model.yaml --runtime container -o tests/golden/container
