# mtlx: `make test` and `make demo` work on a fresh machine (Python >= 3.10 + pip).
# VENV can point outside the repo (CI keeps a cached one keyed by pyproject.toml's hash).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mtlx-installed

.PHONY: venv test lint demo bench readme-demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

demo: venv
	$(VENV)/bin/mtlx run

bench: venv
	$(PY) bench/engine_speed.py

# the README's demo table, regenerated from a run of the current code (a few minutes);
# fails if the committed table differs (bench/readme_demo.py --write updates it)
readme-demo: venv
	$(PY) bench/readme_demo.py --check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
