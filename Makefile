# Two commands a new user needs: `make demo` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

test: $(STAMP)
	$(BIN)/pytest -n 2 $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/bedrock-bot demo

lint: $(STAMP)
	$(BIN)/ruff check bot handlers jobs demo migrations tests bench bot_litellm
	$(BIN)/mypy

# Every bench runs; the ones that missed a target are listed at the end (exit 1 if any).
bench: $(STAMP)
	@missed=""; for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || missed="$$missed $$b"; done; \
	if [ -n "$$missed" ]; then echo "missed a target:$$missed"; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info demo-out
