# Two commands set everything up on a fresh machine:
#   make demo   - create .venv (from a Python >= 3.12 found on this machine), install twoway, run `twoway demo`
#   make test   - the same set-up (plus Chromium for the report's browser test), then the test suite
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-all bench setup browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/find-python.sh scripts/ensure-suitesparse.sh
	scripts/ensure-suitesparse.sh
	@if [ ! -x $(PY) ]; then \
	    base=$$(scripts/find-python.sh) || exit 1; \
	    echo "creating $(VENV) with $$base"; \
	    "$$base" -m venv $(VENV) || exit 1; \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/twoway demo --out demo-output

test: $(STAMP) browser
	$(PY) -m pytest -q -n auto --dist loadfile --durations=10

# everything, the tests marked slow included (end-to-end compiles of the larger models)
test-all: $(STAMP) browser
	$(PY) -m pytest -q -n auto --dist loadfile -m ""

# the report's browser test opens the HTML report in headless Chromium (/usr/bin/chromium)
browser:
	scripts/ensure-chromium.sh

bench: $(STAMP)
	$(PY) benchmarks/bench_seed.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
