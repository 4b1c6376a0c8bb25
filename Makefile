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

# Every bench runs (BENCH_QUICK=1: with --quick where the script takes it, a smoke run); each reports its figures
# (bench/common.Figures) and the run ends with one table of them all: exit 1 on any MISS or any
# bench that failed. BENCH_FIGURES_FILE keeps the collected lines.
BENCH_QUICK ?=
BENCH_FIGURES_FILE ?= bench-figures.tsv
BENCH_FLAGS := $(if $(filter-out 0,$(BENCH_QUICK)),--quick,)
bench: $(STAMP)
	@rm -f $(BENCH_FIGURES_FILE); statuses=""; \
	for b in bench/bench_*.py; do \
	  flags=""; if [ -n "$(BENCH_FLAGS)" ] && grep -q -- '"--quick"' $$b; then flags="--quick"; fi; \
	  echo "== $$b $$flags"; \
	  BENCH_FIGURES=$(BENCH_FIGURES_FILE) $(BIN)/python $$b $$flags; statuses="$$statuses $$b=$$?"; \
	done; echo; echo "== summary"; $(BIN)/python bench/summary.py $(BENCH_FIGURES_FILE) $$statuses

clean:
	rm -rf $(VENV) build *.egg-info demo-out bench-figures.tsv
