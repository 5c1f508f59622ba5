# The two commands a newcomer needs: `make demo` and `make test`. Both bootstrap .venv themselves.
.PHONY: demo test bench lint venv

venv:
	scripts/bootstrap

demo:
	scripts/demo

test:
	scripts/test

bench: venv
	.venv/bin/python bench/foundation.py

lint: venv
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
