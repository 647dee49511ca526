# Two user-facing targets: `make demo` and `make test`. Each sets up its own virtual environment.
# On a machine without an NVIDIA GPU the CPU build of torch is installed first (a plain `torch`
# requirement would pull a multi-GB CUDA build).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
TORCH   ?= torch==2.13.0
PIP     := $(PY) -m pip install -q --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(PY)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "GPU found: installing torch with CUDA"; $(PIP) torch; \
	else \
	  echo "no GPU: installing the CPU build $(TORCH)"; $(PIP) "$(TORCH)"; fi
	@touch $@

$(VENV)/.demo: pyproject.toml setup.py $(VENV)/.torch
	$(PIP) -e '.[onnx,dicom,plot]'
	@touch $@

$(VENV)/.test: pyproject.toml setup.py $(VENV)/.torch
	$(PIP) -e '.[test,onnx,serve,dicom,gpu]'
	@touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(VENV)/bin/same-fast demo -o out/demo

# pytest exits 5 when it collected no test: that is a broken suite, said plainly.
test: $(VENV)/.test
	@$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

lint: $(VENV)/.test
	$(VENV)/bin/ruff check same_fast kernels lab tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info same_fast/*.so
