# The two commands of the README:
#   make demo   runs the whole engine on the embedded default
#   make test   runs the test suite
# Each bootstraps .venv when missing. torch is the CPU build (2.13.0); see README for GPU.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.specsearch-installed

.PHONY: demo test install clean-venv chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet torch==2.13.0
	# hnswlib compiles with -march=native: build it here, never reuse a cached wheel
	# made on another CPU.
	$(PY) -m pip install --quiet --no-cache-dir --no-binary hnswlib "hnswlib>=0.8"
	$(PY) -m pip install --quiet -e ".[cpu,ray,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/specsearch demo

test: $(STAMP) chromium
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m pytest -q tests

# The web page is tested in a real headless browser: Debian's chromium (root installs it;
# elsewhere the browser test is skipped with a reason).
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: the browser test will be skipped"

clean-venv:
	rm -rf $(VENV)
