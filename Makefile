# Two commands on a fresh machine: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The local CPU wheel. Installed before anything else so no requirement can pull a CUDA torch.
TORCH  ?= torch==2.13.0
DEMO_OUT ?= demo-out

.PHONY: install test test-slow demo clean gpu-check compat

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py CMakeLists.txt $(wildcard kernels/csrc/*.cpp kernels/csrc/*.h kernels/csrc/isa/*.cpp)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "$(TORCH)" "setuptools>=70" wheel
	DUALVAE_REQUIRE_EXT=1 $(PIP) install -q --disable-pip-version-check --no-build-isolation -e ".[all,test]"
	touch $@

# First every Triton kernel is compiled for sm_80/sm_90 (no GPU needed; fails on any spill), then the tests run
# with the Triton kernels on CPU tensors under the interpreter, and last the oldest supported triton (3.6) gets the
# compile check, the Triton kernel tests and the GPU check's dry run (bench/compat.py). Slow tests: test-slow.
test: install
	$(PY) -m dualvae.kernels.compile_check
	DUALVAE_REQUIRE_EXT=1 TRITON_INTERPRET=1 $(PY) -m pytest -m "not slow and not gpu" -q
	$(PY) bench/compat.py triton36 --base $(VENV) --venv $(VENV)-triton36 --out $(VENV)-triton36/compat.json

# The oldest supported stack at both halves (bench/compat.py): triton 3.6 over the test venv (also the last step of
# `make test`), then torch 2.11 from the registry, a CUDA build of about 3 GB, in a venv of its own, installing a
# fresh clone with no CUDA toolkit in sight. Reports: bench/results/compat-*.json.
compat: install
	$(PY) bench/compat.py triton36 --base $(VENV) --venv $(VENV)-triton36
	$(PY) bench/compat.py torch211 --venv $(VENV)-torch211

# The one-shot GPU check (bench/gpu_check.py; README "On a GPU"). Needs no install and no venv: on a bare CUDA host
# `make gpu-check OUT=DIR` runs from the source tree with python3 where there is no venv; DRY=1 is its CPU form
# (tests/test_gpu_check.py runs that in `make test`).
OUT    ?= gpu-check-out
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) bench/gpu_check.py --out $(OUT) $(if $(DRY),--dry)

test-slow: install
	TRITON_INTERPRET=1 $(PY) -m pytest -m "slow" -q

demo: install
	$(VENV)/bin/dualvae demo --out $(DEMO_OUT)

clean:
	rm -rf build $(VENV) $(VENV)-triton36 $(VENV)-torch211 kernels/_C*.so *.egg-info
