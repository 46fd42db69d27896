# Two entry points (see README.md): `make demo` and `make test`.
# Both create or refresh the virtual environment in .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-fast clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: venv
	$(PY) tools/demo.py

test: venv
	$(PY) -m pytest -q

test-fast: venv  # everything but the end-to-end trainings marked slow
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) demo_out .pytest_cache
