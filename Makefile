# Two commands on a fresh machine: `make pipeline` and `make test`.
# The environment is installed from requirements.lock with --no-deps: every package is pinned
# there, so pip's resolver never runs (it cannot: prefect 3.9.1 asks for a certifi newer than
# the package index has, see README "Troubleshooting").
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# dvc.yaml stages call `python`: the venv's, as when the venv is activated by hand.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: pipeline test test-fast lint typecheck bench clean-venv

$(STAMP): requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps --requirement requirements.lock
	touch $(STAMP)

pipeline: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP) test-tools lint typecheck
	$(BIN)/python -m pytest

test-fast: $(STAMP) test-tools
	$(BIN)/python -m pytest -m "not slow"

# promtool for the alert-rule tests, unpacked into the venv (scripts/install-test-tools.sh).
.PHONY: test-tools
test-tools: $(STAMP)
	bash scripts/install-test-tools.sh $(BIN)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy components

bench: $(STAMP)
	for name in pipeline train_overhead hpo fault_tolerance compression drift_detection serving segmentation; do \
		PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python benchmarks/$$name.py --quick || exit 1; done

clean-venv:
	rm -rf $(VENV)
