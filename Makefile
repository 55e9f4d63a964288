# One entry point per stage. `make demo` and `make test` work on a fresh machine (see README).
VENV   ?= .venv
PYTHON ?= python3
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup system demo test test-fast lint bench clean proto

# System packages the tests need: bubblewrap, the sandbox for model-written code, and chromium with its chromedriver,
# the headless browser of the playground test (tests/test_playground.py; selenium is pointed at this chromedriver and
# never downloads one). Installed where this can (root, or password-less sudo, with apt); elsewhere it says what to
# install, and the tests that need them fail until they are there.
SYSTEM_PACKAGES = bubblewrap chromium chromium-driver
system:
	@{ command -v bwrap && command -v chromedriver; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    $$SUDO apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	      { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null; }; \
	  else echo "note: install $(SYSTEM_PACKAGES) (e.g. apt-get install $(SYSTEM_PACKAGES)) to sandbox" \
	    "model-written code and run the playground's browser test"; fi; }

# torch first, pinned: any other torch request would pull several GB of CUDA packages on a CPU machine.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) system

# The demo: SmolLM2 (planner, solver) + Gemma-3 (critic) in latent space, then the same run in text mode.
demo: setup
	$(VENV)/bin/recursivemas models pull smollm2-135m-instruct gemma3-270m
	$(VENV)/bin/recursivemas run --mode latent,text

test: setup
	$(PY) -m pytest -q

# The Ray-free core (engine, executor, links, training in one process, HTTP logic): about two minutes.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not ray"

lint: setup
	$(VENV)/bin/ruff check recursivemas benchmarks tests

bench: setup
	$(PY) benchmarks/rollout.py
	$(PY) benchmarks/latent_vs_text.py

# The gRPC stubs in recursivemas/serve/proto/ (committed): regenerate after editing recursivemas.proto.
proto: setup
	$(PY) recursivemas/serve/proto/generate.py

clean:
	rm -rf $(VENV) build *.egg-info
