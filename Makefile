# The two commands a newcomer needs: `make demo` and `make test`.  Both do all set-up first.
.PHONY: setup demo test test-fast reliability bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/python -m guestpull.demo

test: setup
	@.venv/bin/python -m pytest -m "not reliability"

test-fast: setup
	@.venv/bin/python -m pytest -m "not registry and not slow and not reliability"

# Every hostile-registry and hostile-layer scenario, the slow ones too (default limits);
# the registry report goes to docs/reliability.md.
reliability: setup
	@GUESTPULL_RELIABILITY_REPORT=docs/reliability.md .venv/bin/python -m pytest -p no:cacheprovider tests/test_hostile_registry.py tests/image/test_hostile_layers.py

bench: setup
	@.venv/bin/python -m bench

clean:
	rm -rf .venv build src/*.egg-info .pytest_cache
