# The two commands a newcomer needs: `make demo` and `make test`.  Both do all set-up first.
.PHONY: setup demo test test-fast bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/python -m guestpull.demo

test: setup
	@.venv/bin/python -m pytest

test-fast: setup
	@.venv/bin/python -m pytest -m "not registry and not slow"

bench: setup
	@.venv/bin/python -m bench

clean:
	rm -rf .venv build src/*.egg-info .pytest_cache
