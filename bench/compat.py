"""Checks one supported torch/triton stack in a virtual environment of its own (`make compat`).

    python bench/compat.py triton36 [--base .venv] [--out FILE]   triton 3.6 over the make-test venv (make test)
    python bench/compat.py torch211 [--out FILE]                  torch 2.11 from the registry, a CUDA build

triton36, the cheap half (a ~200 MB download): a venv whose own site-packages hold triton==3.6.0 alone and that
imports everything else (torch, the editable dualvae, pytest) from the make-test venv after its own. It runs the
compile check (every config for sm_80/sm_90, no spill), the Triton kernel tests under the interpreter and the GPU
check's dry run.
torch211, the stack of a GPU user with a pip-installed torch (about 3 GB): a fresh venv with torch==2.11.0 from the
registry and the triton it pins; `pip install --no-build-isolation --no-deps` of a fresh clone of HEAD must build
the C++ library with no CUDA toolkit in sight (as root, a mount namespace lays empty directories over
/usr/local/cuda*, and nvcc, CUDA_HOME and CUDA_PATH are taken away); then the compile check, every kernel test
(C++, and Triton under the interpreter) and the GPU check's dry run, all in that venv.

Each stack writes a JSON report (versions, CPU and ISA, and per step its command, exit status, seconds and the
last lines of its output) and exits 1 when a step failed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
from dualvae.data.atomic import write_text_atomic  # noqa: E402
from dualvae.sysinfo import cpu_report  # noqa: E402

STACKS = {
    "triton36": {"triton": "3.6.0"},
    "torch211": {"torch": "2.11.0", "triton": "3.6.0"},
}
KERNEL_TESTS = ["tests/kernels", "-q", "-p", "no:cacheprovider", "-m", "not slow and not gpu"]
# Where a CUDA toolkit lives when one is installed; the namespace hides each one that exists here.
TOOLKIT_GLOBS = ("/usr/local/cuda", "/usr/local/cuda-*", "/opt/cuda")
HIDE = """set -e
mkdir -p "$HIDE_EMPTY"
for d in $HIDE_DIRS; do mount --bind "$HIDE_EMPTY" "$d"; done
for f in $HIDE_FILES; do mount --bind /dev/null "$f"; done
for d in $HIDE_DIRS; do [ -z "$(ls -A "$d")" ] || { echo "hide-cuda: $d still shows files" >&2; exit 3; }; done
if command -v nvcc >/dev/null 2>&1 && nvcc --version >/dev/null 2>&1; then echo "hide-cuda: nvcc runs" >&2; exit 3; fi
exec "$@"
"""


def venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def pip(venv: str, *args: str) -> list[str]:
    return [venv_python(venv), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]


class Steps:
    """Runs commands one after another and keeps, for each, what the report says of it."""

    def __init__(self, log_path: str):
        self.rows: list[dict] = []
        self.log = open(log_path, "w")

    def run(self, name: str, argv: list[str], *, cwd: str = ROOT, env: dict | None = None,
            timeout: float = 1800) -> bool:
        print(f"compat: {name}: {' '.join(argv)}", flush=True)
        start = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out = 124, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}{exc.stderr or ''}"
        seconds = time.monotonic() - start
        self.log.write(f"==== {name} (exit {rc}, {seconds:.0f} s): {' '.join(argv)}\n{out}\n")
        self.log.flush()
        tail = [ln for ln in out.splitlines() if ln.strip() and "WARNING: Location" not in ln][-8:]
        self.rows.append({"step": name, "argv": argv, "rc": rc, "seconds": round(seconds, 1), "tail": tail})
        print(f"compat: {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f} s"
              + ("" if rc == 0 else "\n  " + "\n  ".join(tail)), flush=True)
        return rc == 0

    @property
    def ok(self) -> bool:
        return all(r["rc"] == 0 for r in self.rows)


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "TRITON_INTERPRET", "DUALVAE_REQUIRE_EXT", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def versions(venv: str) -> dict:
    code = ("import json, platform, torch, triton, numpy; print(json.dumps({'python': platform.python_version(), "
            "'torch': torch.__version__, 'torch_cuda': torch.version.cuda, 'triton': triton.__version__, "
            "'numpy': numpy.__version__}))")
    if not os.path.exists(venv_python(venv)):
        return {"error": f"no venv at {venv}"}
    proc = subprocess.run([venv_python(venv), "-c", code], capture_output=True, text=True, env=clean_env(),
                          cwd=tempfile.gettempdir())
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-500:]}


def toolkit_dirs() -> list[str]:
    """The CUDA toolkit directories on this machine (symlinks resolved)."""
    return sorted({os.path.realpath(p) for g in TOOLKIT_GLOBS for p in glob.glob(g) if os.path.isdir(p)})


def hidden_toolkit(argv: list[str], scratch: str) -> tuple[list[str], dict, bool]:
    """argv wrapped to run with no CUDA toolkit visible, its environment, and whether the hiding could happen
    (it needs root and unshare; elsewhere argv runs as it is, with only nvcc's directories off PATH)."""
    dirs = toolkit_dirs()
    nvcc = shutil.which("nvcc")
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not os.path.exists(os.path.join(p, "nvcc")))
    env = clean_env(PATH=path)
    for key in ("CUDA_HOME", "CUDA_PATH", "CUDACXX", "CUDA_ROOT"):
        env.pop(key, None)
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return argv, env, False
    env.update(HIDE_EMPTY=os.path.join(scratch, "empty"), HIDE_DIRS=" ".join(dirs),
               HIDE_FILES=os.path.realpath(nvcc) if nvcc else "")
    script = os.path.join(scratch, "hide-cuda.sh")
    with open(script, "w") as f:
        f.write(HIDE)
    return ["unshare", "-m", "sh", script, *argv], env, True


def triton36(args, steps: Steps, scratch: str) -> dict:
    base = os.path.abspath(args.base)
    venv = os.path.abspath(args.venv or os.path.join(ROOT, ".venv-triton36"))
    want = STACKS["triton36"]["triton"]
    if not os.path.exists(venv_python(venv)):
        steps.run("venv", [sys.executable, "-m", "venv", venv])
    purelib = subprocess.run([venv_python(base), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    own = subprocess.run([venv_python(venv), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    # The base venv's packages come after this venv's own: triton 3.6 here shadows the base's triton.
    with open(os.path.join(own, "dualvae_base_venv.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({purelib!r})\n")
    if versions(venv).get("triton") != want:
        steps.run("install triton", pip(venv, "--no-deps", "--ignore-installed", f"triton=={want}"))
    env = clean_env()
    steps.run("compile_check", [venv_python(venv), "-m", "dualvae.kernels.compile_check"], env=env)
    steps.run("triton kernel tests (interpreter)",
              [venv_python(venv), "-m", "pytest", *KERNEL_TESTS, "-k", "triton or hash_helpers"],
              env=clean_env(TRITON_INTERPRET="1", DUALVAE_REQUIRE_EXT="1"))
    steps.run("gpu_check --dry", [venv_python(venv), os.path.join(ROOT, "bench", "gpu_check.py"), "--dry",
                                  "--out", os.path.join(scratch, "gpu-check-dry")], env=env, cwd=scratch)
    return {"venv": venv, "base_venv": base}


def torch211(args, steps: Steps, scratch: str) -> dict:
    venv = os.path.abspath(args.venv or os.path.join(ROOT, ".venv-torch211"))
    stack = STACKS["torch211"]
    if versions(venv).get("torch", "").split("+")[0] != stack["torch"]:
        shutil.rmtree(venv, ignore_errors=True)
        steps.run("venv", [sys.executable, "-m", "venv", venv])
        # torch from the registry as a GPU user gets it (a CUDA build and the triton it pins), then what the
        # tests and the GPU check's dry run import; no DALI, as on the bare GPU host
        steps.run("install torch", pip(venv, f"torch=={stack['torch']}", "setuptools>=70", "wheel"), timeout=3600)
        steps.run("install test deps", pip(venv, "numpy>=1.26", "pytest>=8.0", "pytest-benchmark>=5.0",
                                           "h5py>=3.10", "pillow>=10.0", "matplotlib>=3.8", "tqdm>=4.66"))
    clone = os.path.join(scratch, "clone")
    steps.run("fresh clone", ["git", "clone", "-q", ROOT, clone])
    argv, env, hidden = hidden_toolkit(pip(venv, "--no-build-isolation", "--no-deps", "--force-reinstall",
                                           clone), scratch)
    steps.run("install the clone (no CUDA toolkit)", argv, env=env, cwd=scratch)
    outside = tempfile.mkdtemp(dir=scratch)  # not the clone's root, whose dualvae/ would shadow the install
    steps.run("C++ library loads", [venv_python(venv), "-c", "import dualvae.kernels as K; "
                                    "assert K.has_compiled_ops(), 'no C++ library'; print('isa', K.cpu_isa())"],
              env=clean_env(), cwd=outside)
    steps.run("compile_check", [venv_python(venv), "-m", "dualvae.kernels.compile_check"], env=clean_env(),
              cwd=outside)
    steps.run("kernel tests (C++, Triton interpreter)",
              [os.path.join(venv, "bin", "pytest"), os.path.join(clone, KERNEL_TESTS[0]), *KERNEL_TESTS[1:]],
              env=clean_env(TRITON_INTERPRET="1", DUALVAE_REQUIRE_EXT="1"), cwd=outside)
    steps.run("gpu_check --dry", [venv_python(venv), os.path.join(clone, "bench", "gpu_check.py"), "--dry",
                                  "--out", os.path.join(scratch, "gpu-check-dry")], env=clean_env(), cwd=outside)
    return {"venv": venv, "toolkit_hidden": hidden, "toolkit_dirs_here": toolkit_dirs()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stack", choices=sorted(STACKS))
    ap.add_argument("--base", default=os.path.join(ROOT, ".venv"), help="triton36: the venv laid under it")
    ap.add_argument("--venv", default=None, help="where the stack's venv goes (default .venv-<stack>)")
    ap.add_argument("--out", default=None, help="report path (default bench/results/compat-<stack>.json)")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", f"compat-{args.stack}.json")
    start = time.monotonic()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"compat-{args.stack}-") as scratch:
        steps = Steps(os.path.splitext(out)[0] + ".log")
        info = (triton36 if args.stack == "triton36" else torch211)(args, steps, scratch)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"stack": args.stack, "ok": steps.ok, "versions": versions(info["venv"]), "commit": commit,
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.monotonic() - start), "cpu": cpu_report(), **info, "steps": steps.rows}
    write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    print(f"compat {args.stack}: {'ok' if steps.ok else 'FAILED'} (torch {report['versions'].get('torch')}, "
          f"triton {report['versions'].get('triton')}) in {report['seconds']} s; report {out}")
    return 0 if steps.ok else 1


if __name__ == "__main__":
    sys.exit(main())
