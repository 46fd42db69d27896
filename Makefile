# Two entry points (see README.md): `make demo` and `make test`.
# Both create or refresh the virtual environment in .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv apps demo test test-fast clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

# The serving apps' environments (apps/deploy, apps/label): each its own venv, because their DICOM
# pins conflict. A .pth file adds .venv's packages (torch, MONAI, ...) and this repository after the
# app's own, so only the app's packages are downloaded; MONAI itself is installed again inside
# .venv-deploy, whose monai/deploy must sit in the same package folder as monai.
apps: .venv-deploy/.installed .venv-label/.installed

.venv-%/.installed: apps/%/requirements.txt $(STAMP)
	rm -rf .venv-$*
	$(PYTHON) -m venv .venv-$*
	echo "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > "$$(.venv-$*/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/00_mrsynth_base.pth"
	echo "$(CURDIR)" >> "$$(.venv-$*/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/00_mrsynth_base.pth"
	.venv-$*/bin/python -m pip install -qq -r apps/$*/requirements.txt
	.venv-$*/bin/python -m pip install -qq --no-deps --ignore-installed "monai==$$($(PY) -c 'import monai; print(monai.__version__)')"
	touch $@

demo: venv
	$(PY) tools/demo.py

# The suite runs in TEST_WORKERS processes (pytest-xdist), one test file per process at a time, so
# module-scoped fixtures are built once; most of a test's time is a bundle run in a subprocess with
# one thread (OMP_NUM_THREADS=1), so two processes keep both cores of the CI machine busy.
TEST_WORKERS ?= 2

test: venv apps
	$(PY) -m pytest -q --durations=30 -n $(TEST_WORKERS) --dist loadfile

test-fast: venv  # everything but the end-to-end trainings marked slow
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .venv-deploy .venv-label demo_out .pytest_cache
