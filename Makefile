# The README's commands. `make serve` and `make test` each do the whole set-up first.
.PHONY: setup serve test lint bench bench-pytest proto redis

PYTHON := .venv/bin/python

setup:
	@sh scripts/setup.sh

redis:
	@sh scripts/ensure_redis.sh

serve: setup
	$(PYTHON) -m sandboxd.cli serve

test: setup redis
	$(PYTHON) -m pytest

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy

bench: setup
	$(PYTHON) -m sandboxd.cli bench --json bench-results.json --plot bench-results.png

bench-pytest: setup
	$(PYTHON) -m pytest bench --benchmark-enable --benchmark-only

proto:
	$(PYTHON) scripts/gen_protos.py
