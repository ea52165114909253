"""The core install is lean: dualvae.kernels imports and runs with none of the data or application extras, and
pyproject's core dependencies are exactly torch, numpy and triton."""
import os
import re
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRAS_ONLY = ("nvidia", "nvidia.dali", "h5py", "PIL", "matplotlib", "tqdm")

CHILD = r"""
import importlib.abc
import importlib.machinery
import sys

BLOCKED = %r


class Blocked(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"{spec.name} is blocked: not part of the core install")

    def exec_module(self, module):
        pass


class Blocker(importlib.abc.MetaPathFinder):
    # A spec with no origin, whose loading fails: `import x` raises ImportError, and find_spec callers that only
    # probe (torch's dynamo probes for tqdm and others) see a module without a file and leave it alone.
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, Blocked(), origin=None)
        return None


sys.meta_path.insert(0, Blocker())
for name in BLOCKED:  # the blocker really blocks
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise AssertionError(f"{name} imported through the blocker")

import os
os.environ["TRITON_INTERPRET"] = "1"  # the triton backend on CPU tensors, read when the ops run
import torch
import dualvae.kernels as K

backends = ["reference", "cpu"] + (["triton"] if K.ops.TRITON_AVAILABLE else [])
g = torch.Generator().manual_seed(0)
mu, logvar = (torch.randn(4, 6, generator=g).requires_grad_() for _ in range(2))
z0 = torch.randn(4, 6, generator=g)
y = (torch.rand(4, 9, generator=g) > 0.5).float()
for backend in backends:
    z, kl = K.reparameterize_kl(mu, logvar, seed=1, backend=backend)
    (z.sum() + kl.sum()).backward()
    head = K.DualHead(6, 9, bias=True, backend=backend)
    loss = head(z0.clone().requires_grad_(), y) + K.dual_bce(z0, head.weight, y, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and head.weight.grad is not None and head.bias.grad is not None
    print("ran", backend)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED or m.startswith("dualvae.data")
                or (m.startswith("dualvae.") and not m.startswith("dualvae.kernels")))
assert not loaded, loaded
print("ok")
"""


def test_kernels_import_and_run_without_the_extras():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", CHILD % (EXTRAS_ONLY,)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ran reference" in proc.stdout and "ran cpu" in proc.stdout


def test_blocker_makes_an_extra_unimportable():
    code = CHILD.split("import os\n")[0] % (("json",),) + "import json\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "json is blocked" in proc.stderr


def test_core_dependencies_are_torch_numpy_triton():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    names = {re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower() for dep in project["dependencies"]}
    assert names == {"torch", "numpy", "triton"}
    extras = project["optional-dependencies"]
    extra_names = {k: {re.match(r"[A-Za-z0-9_.\[\],-]+", d).group(0).lower() for d in v} for k, v in extras.items()}
    assert extra_names["data"] == {"nvidia-dali-cuda120", "h5py", "pillow"}
    assert extra_names["app"] == {"matplotlib", "tqdm"}
    assert extra_names["all"] == {"dualvae[data,app,ui]"}
    assert "test" in extras


def test_kernels_source_imports_no_extra():
    pattern = re.compile(r"^\s*(?:from|import)\s+(PIL|h5py|tqdm|matplotlib|nvidia|dualvae\.(?!kernels)\w+)",
                         re.MULTILINE)
    for folder, _, files in os.walk(os.path.join(ROOT, "kernels")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    assert not pattern.findall(f.read()), name
