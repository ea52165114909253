"""Test-session setup shared by every test file."""
import getpass
import os
import tempfile

import torch

# The Triton kernels run compiled on a CUDA device where there is one, else on CPU tensors through the
# interpreter (which has no bf16 tl.dot, and would test the CPU, not the GPU). Our kernels read the mode at
# launch, but triton.jit functions elsewhere (torch's inductor) fix it when they are decorated, so it is decided
# here, before any test module imports triton; an explicit TRITON_INTERPRET is kept. device_count() asks NVML,
# so this does not initialise CUDA in the pytest process (a process forked after CUDA is initialised cannot use
# it).
if "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.device_count() > 0 else "1"

# Inductor's on-disk cache does not key on ATEN_CPU_CAPABILITY: a kernel generated for 16-lane AVX-512 vectors and
# found again by a run forced to AVX2 (8 lanes) is rebuilt with the AVX2 vector type and skips half its elements.
# Runs forced to a capability get a cache of their own.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY']}")

