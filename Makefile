# airflow-hitl: `make demo` starts Airflow with the plugin and example DAGs; `make test` runs every test.
.PHONY: install demo test test-unit test-e2e lint typecheck docs bench screenshots clean

VENV ?= .venv
PY := $(VENV)/bin/python

# Everything: the package with its test, dev and docs extras, Chromium and Redis (tests, CI).
install:
	bash scripts/bootstrap.sh

# Only what the demo runs (scripts/demo.sh installs it: `bootstrap.sh --demo`). make passes a
# TERM on to the script, which stops every component before it exits.
demo:
	bash scripts/demo.sh

test: install lint typecheck
	PY=$(PY) bash scripts/run-tests.sh

test-unit: install
	$(PY) -m pytest tests -q -m "not e2e"

test-e2e: install
	$(PY) -m pytest tests -q -m e2e

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy airflow_hitl

# The docs site (mkdocs.yml), warnings as errors; SITE_DIR=... builds it elsewhere.
docs: install
	AIRFLOW_HOME=$$(mktemp -d) NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(or $(SITE_DIR),site)

bench: install
	$(PY) benchmarks/trigger_scale.py
	$(PY) benchmarks/api_latency.py
	$(PY) benchmarks/notify_latency.py
	$(PY) benchmarks/resume_vs_native.py
	$(PY) benchmarks/analytics.py

# Refresh the README's pictures (docs/images/): light and dark, desktop and 375 px, taken by the
# browser tests against a real Airflow. Plain test runs write screenshots to a temporary folder.
screenshots: install
	HITL_SCREENSHOTS_DIR=$(CURDIR)/docs/images $(PY) -m pytest tests/ui -q -k screenshots

clean:
	rm -rf .demo site build dist *.egg-info .setuptools/*.egg-info .pytest_cache .mypy_cache .ruff_cache
