# Two entry points, both self-bootstrapping into .venv on a fresh machine:
#   make demo   — the main job
#   make test   — the test suite (what CI runs)
PY ?= python3
VENV ?= .venv
# The CPU wheel of torch this project is tested with; override on a GPU box,
# e.g. `make test TORCH_SPEC='torch==2.13.0' PIP_EXTRA='--index-url https://download.pytorch.org/whl/cu128'`.
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(PIP_EXTRA) '$(TORCH_SPEC)'
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	# the torchcodec reader's tests (tests/data/test_decode.py): 0.13 is the last PyPI wheel built for
	# the CPU (later ones link CUDA's libnvrtc); it needs FFmpeg's shared libraries (.ci/run installs
	# Debian's), and its tests skip where they are missing. --no-deps: it must not pull another torch.
	$(VENV)/bin/python -m pip install -q --no-deps 'torchcodec==0.13.0'
	touch $@

.PHONY: install test demo dev
install: $(VENV)/.installed

# developer tools (mutation testing: bash benchmarks/mutation.sh; not part of `make test`)
dev: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q -e '.[test,dev]'

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q tests

demo: $(VENV)/.installed
	$(VENV)/bin/vclip demo
