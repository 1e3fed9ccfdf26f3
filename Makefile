# make demo : create/reuse .venv, install, launch the Gradio app (offline: the toy model serves; ARGS="--tiny")
# make test : create/reuse .venv, install dev extras (+ chromium where apt exists), run the whole suite
#             (both tiers: `pytest` alone runs the fast tier in a few minutes; `pytest --all` everything)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# torch and torchvision must come as a matching pair, installed first (see ../shared/ENV.md).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: demo test install install-dev browser lint bench clean

# requirements.txt's index line is for Spaces (torch's CPU build); here torch comes from TORCH_SPEC.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_SPEC)
	grep -v '^--extra-index-url' requirements.txt > $(VENV)/requirements-local.txt
	$(PIP) install -q -r $(VENV)/requirements-local.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	grep -v '^-r requirements.txt' requirements-dev.txt > $(VENV)/requirements-dev-local.txt
	$(PIP) install -q -r $(VENV)/requirements-dev-local.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Debian chromium for the browser test (skipped silently where apt is unavailable or not root).
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; fi

demo: install
	$(PY) app.py $(ARGS)

test: install-dev browser
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -q --all $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_zeroshot.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_detection.py
	$(PY) benchmarks/bench_app.py

clean:
	rm -rf $(VENV) .pytest_cache
