# The two commands of README.md. Both install what they need first (idempotent).
.PHONY: up test lint bench

up:
	scripts/install.sh
	.venv/bin/glmserve up

test:
	scripts/install.sh --test
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check glmserve tests benchmarks
	.venv/bin/ruff format --check glmserve tests benchmarks
	.venv/bin/mypy
	.venv/bin/lint-imports

bench:
	scripts/install.sh
	.venv/bin/python -m benchmarks
