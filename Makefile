# Two commands on a fresh machine: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The local CPU wheel. Installed before anything else so no requirement can pull a CUDA torch.
TORCH  ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: install test test-slow demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt $(wildcard kernels/csrc/*.cpp kernels/csrc/*.h kernels/csrc/isa/*.cpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH)" "setuptools>=70" wheel
	$(PIP) install -q --disable-pip-version-check --no-build-isolation -e ".[test]"
	touch $@

# First every Triton kernel is compiled for sm_80/sm_90 (no GPU needed; fails on any spill), then the tests run
# with the Triton kernels on CPU tensors under the interpreter. Slow tests are left to test-slow.
test: install
	$(PY) -m dualvae.kernels.compile_check
	DUALVAE_REQUIRE_EXT=1 TRITON_INTERPRET=1 $(PY) -m pytest -m "not slow and not gpu" -q

test-slow: install
	TRITON_INTERPRET=1 $(PY) -m pytest -m "slow" -q

demo: install
	$(VENV)/bin/dualvae demo --out $(DEMO_OUT)

clean:
	rm -rf build $(VENV) kernels/_C*.so *.egg-info
