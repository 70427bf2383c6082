# The two commands of README.md. Both install what they need first (idempotent).
.PHONY: up test lint bench lock images

up:
	scripts/install.sh
	.venv/bin/glmserve up

# Lint first: a layering or type error fails in seconds, before the ~15 min of tests.
test:
	scripts/install.sh --test
	$(MAKE) --no-print-directory lint
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check glmserve tests benchmarks scripts
	.venv/bin/ruff format --check glmserve tests benchmarks scripts
	.venv/bin/mypy
	.venv/bin/lint-imports

bench:
	scripts/install.sh
	.venv/bin/python -m benchmarks

# Exact versions per target (locks/*.txt) from pyproject.toml; UPGRADE=1 takes the newest releases it allows.
lock:
	scripts/install.sh
	.venv/bin/python scripts/locks.py compile $(if $(filter 1,$(UPGRADE)),--upgrade)

# images/operator and images/serving with Docker, podman or buildah (see scripts/build-images.sh).
images:
	scripts/build-images.sh
