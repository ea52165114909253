"""What the kernel tests share: the backend checks and random dual_bce inputs in float64."""
import os

import pytest
import torch

from dualvae import kernels
from dualvae.kernels._jit import interpreting


def require_backend(name: str) -> str:
    """`name`, or skip where it cannot run. `make test` sets DUALVAE_REQUIRE_EXT=1: there a missing C++ build
    fails instead."""
    if name == "triton" and not (interpreting() or torch.cuda.is_available()):
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    if name == "cpu" and not kernels.has_compiled_ops():
        if os.environ.get("DUALVAE_REQUIRE_EXT") == "1":
            pytest.fail("backend 'cpu': the compiled CPU kernels were not loaded")
        pytest.skip("the C++ CPU kernels are not built")
    return name


def bce_inputs(B, n, d, mask_kind, *, seed=0, scale=1.0):
    """(z, U, y, mask, bias) in float64; mask_kind none | all_zero | all_one | random."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, d, generator=g, dtype=torch.float64) * scale
    U = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = (torch.rand(B, n, generator=g) > 0.5).double()
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    mask = {"none": None, "all_zero": torch.zeros(B, n, dtype=torch.float64),
            "all_one": torch.ones(B, n, dtype=torch.float64),
            "random": (torch.rand(B, n, generator=g) > 0.4).double()}[mask_kind]
    return z, U, y, mask, bias
