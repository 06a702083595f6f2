# make demo: the whole path on this machine (moto's S3 on 127.0.0.1, no AWS account);
#            make demo S3=rgw runs it on Ceph's RADOS Gateway (Debian packages, see README).
# make test: lint, type check and the test suite.
PYTHON ?= python3
S3 ?= moto
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): pyproject.toml tests/wheels.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	# The wheels the tests build wheelhouses from: the tests themselves never ask an index.
	$(BIN)/python -m tests.wheels $(VENV)/test-wheels
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m demo --s3 $(S3)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .demo dist build .pytest_cache .mypy_cache .ruff_cache .test-artifacts

# make bench: the agent beside plain clients on local servers (moto; Ceph RGW where installed).
# BENCH_ARGS="--runs 1 --only files" picks rows; the table goes to stdout (benchmarks/RESULTS.md).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)
