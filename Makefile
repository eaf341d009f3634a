# Every target works from a fresh clone: the first one that needs the
# virtual environment creates it in .venv and installs the project into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format clean crash-trials bench bench-webhooks

install: $(STAMP)

$(STAMP): pyproject.toml plugins/archive/pyproject.toml plugins/summary/pyproject.toml \
		plugins/deliverability/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]' -e plugins/archive -e plugins/summary \
		-e plugins/deliverability
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/processor run --sandbox

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(BENCH_VENV) .processor .pytest_cache .mypy_cache .ruff_cache

# Crash trials: kill -9 a worker while a poll is pending, during the
# download and during parsing, TRIALS times each, and check that every run
# completes with each event archived exactly once.
TRIALS ?= 5

crash-trials: $(STAMP)
	for trial in $$(seq 1 $(TRIALS)); do \
		echo "crash trial $$trial of $(TRIALS)"; \
		$(BIN)/pytest -q -p no:cacheprovider tests/test_redis_pipeline.py \
			-k "killed or restart or duplicate or two_triggers or sigterm" || exit 1; \
	done

# Parser benchmark: the processor against a naive parser, pandas and bare
# inflating, on generated exports (kept in bench/.data). pandas is installed
# into its own environment, never into the project's.
BENCH_VENV := .venv-bench
BENCH_EVENTS ?= 1000000
BENCH_LARGE ?= 5000000
BENCH_REPEAT ?= 1

$(BENCH_VENV)/.installed: pyproject.toml bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -e . -r bench/requirements.txt
	touch $@

bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python bench/parse_bench.py --events $(BENCH_EVENTS) \
		--large $(BENCH_LARGE) --repeat $(BENCH_REPEAT)

# Webhook benchmark: latency of processor web per kind of delivery, against
# GET /healthz in the same run. It starts its own redis-server.
WEBHOOK_REQUESTS ?= 2000

bench-webhooks: $(STAMP)
	$(BIN)/python bench/webhook_bench.py --requests $(WEBHOOK_REQUESTS)
