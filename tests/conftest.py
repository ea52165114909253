"""Test-session setup shared by every test file."""
import os

import pytest
import torch

# The Triton kernels run compiled on a CUDA device where there is one, else on CPU tensors through the
# interpreter (which has no bf16 tl.dot, and would test the CPU, not the GPU). Triton fixes the mode of each
# kernel when it is decorated, so it is decided here, before any test module imports triton; an explicit
# TRITON_INTERPRET is kept. device_count() asks NVML, so this does not initialise CUDA in the pytest process
# (a process forked after CUDA is initialised cannot use it).
if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.device_count() > 0 else "1"


def triton_device() -> str:
    """Where backend "triton" tensors live: "cpu" where its kernels are interpreted, else "cuda"."""
    from dualvae.kernels import ops

    return "cpu" if ops._tk is None or ops._tk.INTERPRET else "cuda"


@pytest.fixture(name="triton_device")
def _triton_device() -> str:
    return triton_device()
