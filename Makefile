# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is installed first and pinned: on these machines torch==2.13.0 is a local CPU wheel, while an
# unpinned torch would pull a multi-GB CUDA build. pyproject keeps a range, which 2.13.0 then satisfies.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test venv venv-dev clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)

venv: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e ".[plot]"

venv-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH) -e ".[dev]"

demo: venv
	$(BIN)/rlhfkit demo

# Browser tests drive Debian's chromium (no browser download); the setup installs it when it can (root/sudo)
# and the browser tests skip, saying why, when it is absent.
test: venv-dev
	bash scripts/setup_browser.sh $(VENV)
	$(BIN)/python -m pytest -q --timeout 900 -p no:cacheprovider

clean:
	rm -rf $(VENV) runs build *.egg-info
