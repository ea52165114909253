"""Importing dualvae.kernels has no side effects on the process: the environment is left as it was, and the
Triton mode is read when an op runs (TRITON_INTERPRET set after the import still runs the kernels on CPU)."""
import os
import subprocess
import sys

CHILD = r"""
import os
before = dict(os.environ)
import torch
import dualvae.kernels as K
from dualvae.kernels import reference as ref
assert dict(os.environ) == before, sorted(set(os.environ.items()) ^ set(before.items()))
try:
    K.resolve_backend("triton", device="cpu")
except ValueError as exc:
    assert "TRITON_INTERPRET=1" in str(exc), exc
else:
    raise AssertionError("triton on CPU tensors was accepted without TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
assert K.resolve_backend("triton", device="cpu") == "triton"
g = torch.Generator().manual_seed(0)
mu, logvar, eps = (torch.randn(5, 7, generator=g) for _ in range(3))
for a, b in zip(K.reparameterize_kl(mu, logvar, eps, backend="triton"), ref.reparameterize_kl(mu, logvar, eps)):
    torch.testing.assert_close(a, b)
z = torch.randn(6, 7, generator=g, requires_grad=True)
U = torch.randn(9, 7, generator=g)
y = (torch.rand(6, 9, generator=g) > 0.5).float()
loss = K.dual_bce(z, U, y, backend="triton")
loss.backward()
torch.testing.assert_close(loss, ref.dual_bce(z, U, y))
print("ok")
"""


def test_import_changes_no_environment_and_triton_mode_is_read_at_run_time():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITON_")}
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "TRITON_DEFAULT_FP_FUSION" not in proc.stderr  # fusion is named at launch: triton does not warn
