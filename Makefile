# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo

.PHONY: demo test lint install clean

$(VENV)/.installed: requirements.txt requirements-serving.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-serving.txt
	touch $@

install: $(VENV)/.installed

# The main job end to end on the built-in synthetic dataset.
demo: $(VENV)/.installed
	$(PY) -m pipeline.run --demo --workdir $(DEMO_DIR)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

# ruff (ruff.toml: pyflakes, pycodestyle at 100 columns, import order, bugbear).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
