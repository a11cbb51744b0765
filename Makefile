# Two commands do everything on a fresh machine:
#   make demo   build model.yaml, serve it, query every model over HTTP and gRPC, stream from the
#               LLM, profile it
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test build clean golden lock

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install-system-deps
	scripts/install-system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	touch $(STAMP)

# Pin the current environment's versions (then `make golden`: the manifests record them).
lock: setup
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

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
	TRITONIZE_UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_llm_container.py -k golden
