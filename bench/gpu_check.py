"""One-shot check of the CUDA paths on a bare GPU host (torch + triton preinstalled, no network, no DALI).

    python3 bench/gpu_check.py --out DIR            # the real check, <= --budget-s (default 480 s)
    python3 bench/gpu_check.py --out DIR --dry      # CPU, tiny sizes, Triton interpreter: the same stages
    make gpu-check OUT=DIR [DRY=1]

Runs from the source tree without installing: every child process gets a PYTHONPATH whose first entry holds a
sitecustomize.py that maps dualvae.kernels -> kernels/ and dualvae.data -> data/ (setup.py's package_dir), so
`import dualvae.kernels` works as after `pip install -e .`. The C++ CPU library is optional (its stage is last).

Stages, in order of importance; one is skipped when the time left would not cover its estimate:
    env      GPU name, versions, cpu_report(), whether the C++ library loaded (always runs)
    tests    pytest: the gpu-marked tests and every test with "triton" in its id, on CUDA (interpreter off);
             not tests/test_gpu_check.py (this script's own dry run)
    kernels  bench/bench_dual_bce.py and bench/bench_reparam_kl.py at the key sizes, fp32 and bf16, every
             implementation, and the copy bandwidth
    linear_bce  bench/bench_linear_bce.py at three sizes (n = 40 to 65,536): ours (Triton) against eager,
             torch.compile, a chunked implementation and the GEMMs alone
    train    bench/train_step.py: eager vs ours, fp32 and bf16, compiled and not (PIL data: no DALI there)
    data     bench/data_throughput.py: the rows that need no DALI (the HDF5 rows need --cache without DALI)
    ext      builds the C++ library with CMake into kernels/ and checks that it loads
Writes to DIR at most 7 files: summary.json (a verdict per stage: pass/fail/skipped, reason, seconds, plus the
environment), gpu_check.log (every child's output), tests.json, kernels-<gpu>.json, linear_bce-<gpu>.json,
train-<gpu>.json, data-<gpu>.json. Exit status 1 when a stage failed.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The checkout's one atomic writer, data/atomic.py (dualvae.data.atomic), loaded from its file: it needs only the
# standard library, so this works on a bare host before anything is installed.
sys.path.insert(0, ROOT)
_spec = importlib.util.spec_from_file_location("_dualvae_atomic", os.path.join(ROOT, "data", "atomic.py"))
_atomic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_atomic)
write_text_atomic = _atomic.write_text_atomic

# Estimated seconds of each stage on an H200 host (real) and on a 2-core CPU (dry): a stage starts only when
# the time left covers its estimate; the stage's own time limit is the time left.
ESTIMATE_S = {
    "tests": (150, 10),
    "kernels": (200, 5),
    "linear_bce": (120, 20),
    "train": (120, 5),
    "data": (60, 5),
    "ext": (180, 0),
}
KEY_SIZES = "4096x128x65536,256x128x4096,65536x256"  # each script takes the sizes of its form (BxDxN, BxD)
KERNEL_BENCHES = ("bench/bench_dual_bce.py", "bench/bench_reparam_kl.py")
LINEAR_BCE_SIZES = "64x128x40,1024x128x8192,1024x128x65536"
DRY_TESTS = 2  # the dry run selects the same tests but runs only the first few (the interpreter is slow)
SITECUSTOMIZE = '''\
"""Written by bench/gpu_check.py: imports dualvae.kernels / dualvae.data from the checkout {root!r}."""
import importlib.abc
import importlib.util
import os
import sys

_MAP = {{"dualvae.kernels": os.path.join({root!r}, "kernels"), "dualvae.data": os.path.join({root!r}, "data")}}


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        where = _MAP.get(name)
        if where is None:
            return None
        return importlib.util.spec_from_file_location(name, os.path.join(where, "__init__.py"),
                                                      submodule_search_locations=[where])


sys.meta_path.insert(0, _SourceTreeFinder())
'''


# pytest plugin of the dry run: keeps the first DUALVAE_GPU_CHECK_FIRST selected tests (one pytest start, not two)
LIMIT_PLUGIN = '''\
import os

import pytest


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(session, config, items):
    first = int(os.environ.get("DUALVAE_GPU_CHECK_FIRST", "0"))
    if first and len(items) > first:
        print(f"gpu_check: {len(items)} tests selected, running the first {first}")
        config.hook.pytest_deselected(items=items[first:])
        del items[first:]
'''


def write_shim(dest: str) -> str:
    """The directory to put first on PYTHONPATH (with ROOT after it) so the checkout imports as installed."""
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE.format(root=ROOT))
    with open(os.path.join(dest, "dualvae_gpu_check_limit.py"), "w") as f:
        f.write(LIMIT_PLUGIN)
    return dest


class Check:
    def __init__(self, out: str, dry: bool, budget_s: float, shim: str, scratch: str):
        self.out, self.dry, self.budget_s, self.scratch = out, dry, budget_s, scratch
        self.t0 = time.monotonic()
        self.stages: list[dict] = []
        self.log = open(os.path.join(out, "gpu_check.log"), "w")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [shim, ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
            PYTHONUNBUFFERED="1")
        if dry:
            env["TRITON_INTERPRET"] = "1"
            env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
            env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU form, also on a GPU host
        else:
            env.pop("TRITON_INTERPRET", None)  # compiled Triton kernels on the GPU
        self.env = env

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def say(self, text: str):
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def run(self, cmd: list[str], timeout: float, cwd: str = ROOT) -> tuple[int | None, str]:
        """Run a child with the source-tree environment; its output goes to the log. rc None: timed out."""
        self.say("$ " + " ".join(cmd))
        try:
            p = subprocess.run(cmd, cwd=cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=max(timeout, 1.0))
            out, rc = p.stdout, p.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            rc = None
        self.log.write(out)
        self.log.write(f"[exit status {rc if rc is not None else 'timeout'}]\n")
        self.log.flush()
        return rc, out

    def stage(self, name: str, fn):
        est = ESTIMATE_S[name][1 if self.dry else 0]
        left = self.left()
        rec = {"stage": name, "estimate_s": est}
        if left < est:
            rec.update(verdict="skipped", reason=f"{left:.0f} s left, the stage is estimated at {est} s", seconds=0.0)
        else:
            t = time.monotonic()
            try:
                verdict, reason, extra = fn(left)
            except Exception as exc:  # a broken stage is a verdict, not the end of the check
                verdict, reason, extra = "fail", f"{type(exc).__name__}: {exc}", {}
            rec.update(verdict=verdict, reason=reason, seconds=round(time.monotonic() - t, 1), **extra)
        self.stages.append(rec)
        self.say(f"== {name}: {rec['verdict']} ({rec['seconds']} s) {rec['reason']}")
        return rec

    def keep(self, path: str) -> str:
        """Copy a result file into DIR; its name there."""
        name = os.path.basename(path)
        shutil.copyfile(path, os.path.join(self.out, name))
        return name


def env_info(check: Check) -> dict:
    code = ("import json, os, platform, sys, torch\n"
            "import dualvae.kernels as K\n"
            "from dualvae.sysinfo import cpu_report\n"
            "try:\n import triton; tv = triton.__version__\nexcept ImportError:\n tv = None\n"
            "cuda = torch.cuda.is_available()\n"
            "print('ENV ' + json.dumps({'python': platform.python_version(), 'torch': torch.__version__,"
            " 'triton': tv, 'cuda_runtime': torch.version.cuda, 'cuda_available': cuda,"
            " 'gpu_name': torch.cuda.get_device_name() if cuda else None,"
            " 'gpu_capability': list(torch.cuda.get_device_capability()) if cuda else None,"
            " 'gpu_count': torch.cuda.device_count(), 'compiled_cpu_ops': K.has_compiled_ops(),"
            " 'cpu_isa_build': K.cpu_isa() if hasattr(K, 'cpu_isa') else None,"
            " 'dualvae_kernels_from': os.path.dirname(K.__file__), 'cpu': cpu_report(),"
            " 'source_tree_shim': any(type(f).__name__ == '_SourceTreeFinder' for f in sys.meta_path)}))\n")
    rc, out = check.run([sys.executable, "-c", code], timeout=min(check.left(), 120))
    lines = [ln for ln in out.splitlines() if ln.startswith("ENV ")]
    if rc != 0 or not lines:
        raise RuntimeError(f"importing dualvae from the source tree failed (exit {rc}); see gpu_check.log")
    info = json.loads(lines[-1][4:])
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = None
    info.update(host=platform.node(), loadavg=list(os.getloadavg()), dry=check.dry)
    return info


def stage_tests(check: Check, left: float):
    junit = os.path.join(check.scratch, "junit.xml")
    select = [sys.executable, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-q",
              "-m", "gpu or not slow", "-k", "(gpu or triton) and not gpu_check"]
    cmd = select + [f"--junitxml={junit}", "-rfEs"]
    extra = {}
    if check.dry:
        check.env["DUALVAE_GPU_CHECK_FIRST"] = str(DRY_TESTS)
        cmd += ["-p", "dualvae_gpu_check_limit"]
    rc, out = check.run(cmd, timeout=check.left())
    check.env.pop("DUALVAE_GPU_CHECK_FIRST", None)
    found = re.search(r"gpu_check: (\d+) tests selected", out)
    if found:
        extra["selected"] = int(found.group(1))
    if not os.path.exists(junit):
        return "fail", f"pytest wrote no report (exit {'timeout' if rc is None else rc})", extra
    res = junit_summary(junit)
    res["selection"] = ("-m 'gpu or not slow' -k '(gpu or triton) and not gpu_check'"
                        + (f" (dry: first {DRY_TESTS})" if check.dry else ""))
    path = write_text_atomic(os.path.join(check.scratch, "tests.json"), json.dumps(res, indent=1))
    extra.update(files=[check.keep(path)], **{k: res[k] for k in ("passed", "failed", "errors", "skipped")})
    if rc is None:
        return "fail", "pytest ran out of time", extra
    bad = res["failed"] + res["errors"]
    if rc != 0 or bad:
        failures = ", ".join(f["id"] for f in res["failures"][:5])
        return "fail", f"{bad} failed/errored of {res['tests']}: " + failures, extra
    if not check.dry and res["passed"] == 0:
        return "fail", "no test ran (all skipped: is CUDA visible to pytest?)", extra
    return "pass", f"{res['passed']} passed, {res['skipped']} skipped", extra


def junit_summary(path: str) -> dict:
    root = ET.parse(path).getroot()
    res = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skips": {}}
    for case in root.iter("testcase"):
        res["tests"] += 1
        tid = f"{case.get('classname')}::{case.get('name')}"
        kinds = {c.tag: c for c in case}
        if "failure" in kinds or "error" in kinds:
            tag = "failure" if "failure" in kinds else "error"
            res["failed" if tag == "failure" else "errors"] += 1
            node = kinds[tag]
            res["failures"].append({"id": tid, "kind": tag,
                                    "message": ((node.get("message") or "") + "\n" + (node.text or ""))[-1500:]})
        elif "skipped" in kinds:
            res["skipped"] += 1
            reason = (kinds["skipped"].get("message") or "")[:200]
            res["skips"][reason] = res["skips"].get(reason, 0) + 1
        else:
            res["passed"] += 1
    return res


def _written(out: str, prefix: str) -> str | None:
    found = sorted(glob.glob(os.path.join(out, prefix + "*.json")), key=os.path.getmtime)
    return found[-1] if found else None


def stage_kernels(check: Check, left: float):
    sub = os.path.join(check.scratch, "kernels")
    flags = ["--out", sub]
    if check.dry:
        # no torch.compile rows: inductor's first compile alone would take most of the dry run's minute
        flags += ["--quick", "--device", "cpu", "--impls", "eager,ours-cpu,ours"]
    else:
        flags += ["--device", "cuda", "--sizes", KEY_SIZES, "--dtypes", "fp32,bf16", "--budget-s", "2"]
    # both scripts write their rows into the one kernels-<gpu>.json
    t0 = time.monotonic()
    for script in KERNEL_BENCHES:
        rc, _ = check.run([sys.executable, script, *flags], timeout=max(1.0, left - (time.monotonic() - t0)))
        if rc != 0:
            break
    path = _written(sub, "kernels-")
    extra = {"files": [check.keep(path)]} if path else {}
    if path:
        rep = json.load(open(path))
        rows = rep.get("rows", [])
        errors = [f"{r['op']} {r.get('B')}x{r.get('n') or r.get('d')} {r['dtype']} {r['impl']}: "
                  f"{str(r['error'])[:200]}" for r in rows if "error" in r]
        extra.update(rows=len(rows), row_errors=errors, copy_gbps=rep.get("copy_gbps"))
    if rc is None:
        return "fail", f"{script} ran out of time (partial rows kept)", extra
    if rc != 0 or not path:
        return "fail", f"{script} exit {rc}" + ("" if path else ", no report"), extra
    return "pass", f"{extra['rows']} rows", extra


def _supported(check: Check, script: str, flags: list[str]) -> list[str]:
    """Drop the flags (with their values) that the script's --help does not list: its CLI may change."""
    _, out = check.run([sys.executable, script, "--help"], timeout=min(check.left(), 120))
    kept, i = [], 0
    while i < len(flags):
        flag = flags[i]
        has_value = i + 1 < len(flags) and not flags[i + 1].startswith("--")
        if re.search(r"(^|[\s\[,])" + re.escape(flag) + r"\b", out):
            kept += flags[i:i + 1 + has_value]
        else:
            check.say(f"{script}: --help does not list {flag}; dropped")
        i += 1 + has_value
    return kept


def _bench_stage(check: Check, left: float, script: str, prefix: str, flags: list[str]):
    sub = os.path.join(check.scratch, prefix.rstrip("-"))
    t = time.monotonic()
    flags = _supported(check, script, flags)
    rc, out = check.run([sys.executable, script, "--out", sub] + flags, timeout=left - (time.monotonic() - t))
    path = _written(sub, prefix)
    extra = {"files": [check.keep(path)]} if path else {}
    if path:
        rep = json.load(open(path))
        rows = rep.get("rows", [])
        if isinstance(rows, list):
            extra["rows"] = len(rows)
            extra["row_errors"] = [f"{r.get('config') or r.get('backend')}: {str(r['error'])[:200]}"
                                   for r in rows if isinstance(r, dict) and "error" in r]
            extra["rows_skipped"] = [f"{r.get('config') or r.get('backend')}: {str(r['skipped'])[:200]}"
                                     for r in rows if isinstance(r, dict) and "skipped" in r]
        if rep.get("skipped"):
            extra["skipped"] = rep["skipped"]
    if rc is None:
        return "fail", f"{script} ran out of time", extra
    if rc != 0 or not path:
        return "fail", f"{script} exit {rc}" + ("" if path else ", no report"), extra
    return "pass", f"{extra.get('rows', '?')} rows", extra


def stage_train(check: Check, left: float):
    if check.dry:
        flags = ["--quick", "--device", "cpu", "--data-backend", "pil", "--num", "64", "--batch-size", "8",
                 "--configs", "eager,kernels"]
    else:
        flags = ["--device", "cuda", "--data-backend", "pil",
                 "--configs", "eager,kernels,compile,bf16,kernels-bf16,eager-bf16", "--steps", "10", "--rounds", "3"]
    return _bench_stage(check, left, "bench/train_step.py", "train-", flags)


def stage_data(check: Check, left: float, cache: str | None):
    if check.dry:
        flags = ["--quick", "--device", "cpu", "--no-demo", "--num", "48", "--batch-size", "8"]
    else:
        flags = ["--device", "cuda", "--num", "4096", "--epochs", "2", "--no-demo"]
    if cache:
        flags += ["--cache", cache]
    return _bench_stage(check, left, "bench/data_throughput.py", "data-", flags)


def stage_linear_bce(check: Check, left: float):
    sub = os.path.join(check.scratch, "linear_bce")
    flags = ["--out", sub] + (["--quick", "--device", "cpu", "--threads", "1"] if check.dry else
                              ["--device", "cuda", "--sizes", LINEAR_BCE_SIZES, "--rounds", "3"])
    rc, _ = check.run([sys.executable, "bench/bench_linear_bce.py", *flags], timeout=left)
    path = _written(sub, "linear_bce-")  # its .md and plots stay behind: the JSON holds every number
    extra = {"files": [check.keep(path)]} if path else {}
    if path:
        rep = json.load(open(path))
        extra.update(rows=len(rep.get("rows", [])), targets_ok=rep.get("targets", {}).get("all_ok"))
    if rc is None:
        return "fail", "bench_linear_bce.py ran out of time", extra
    if rc != 0 or not path:
        return "fail", f"bench_linear_bce.py exit {rc}" + ("" if path else ", no report"), extra
    return "pass", f"{extra['rows']} rows", extra


def stage_ext(check: Check, left: float):
    if check.dry:
        return "skipped", "dry run: the CMake build takes minutes on 2 cores (make install builds it here)", {}
    if shutil.which("cmake") is None:
        return "skipped", "cmake is not on PATH; everything above ran on the pure-PyTorch CPU path", {}
    build = os.path.join(check.scratch, "cmake-build")
    os.makedirs(build, exist_ok=True)
    import sysconfig
    target = os.path.join(ROOT, "kernels", "_C" + sysconfig.get_config_var("EXT_SUFFIX"))
    t = time.monotonic()
    rc, _ = check.run(["cmake", ROOT, "-DCMAKE_BUILD_TYPE=Release", f"-DDUALVAE_OUTPUT={target}",
                       f"-DPython_EXECUTABLE={sys.executable}"], timeout=left, cwd=build)
    if rc == 0:
        rc, _ = check.run(["cmake", "--build", ".", "-j", str(os.cpu_count() or 2)],
                          timeout=left - (time.monotonic() - t), cwd=build)
    if rc != 0:
        return "fail", f"CMake build of the C++ library failed (exit {rc}); the Python side runs without it", {}
    rc, out = check.run([sys.executable, "-c", "import dualvae.kernels as K; assert K.has_compiled_ops(); "
                         "print('isa', K.cpu_isa() if hasattr(K, 'cpu_isa') else None)"], timeout=120)
    if rc != 0:
        return "fail", "built, but dualvae.kernels does not load it", {}
    return "pass", f"built {os.path.basename(target)}; " + out.strip().splitlines()[-1], {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the directory the (at most 7) result files go to")
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes, Triton interpreter")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="total time (default 480; dry 240: a loaded 2-core machine)")
    ap.add_argument("--cache", default=None, help="an HDF5 cache from `dualvae prepare` for the data stage's hdf5 rows")
    ap.add_argument("--stages", default=None,
                    help="comma list of stages to run after env (default: all; none: env only)")
    args = ap.parse_args(argv)
    budget = args.budget_s if args.budget_s is not None else (240.0 if args.dry else 480.0)
    if args.stages:
        unknown = set(args.stages.split(",")) - {"tests", "kernels", "linear_bce", "train", "data", "ext", "none"}
        if unknown:
            ap.error(f"--stages: unknown stage {sorted(unknown)[0]!r} "
                     "(tests, kernels, linear_bce, train, data, ext, none)")
    os.makedirs(args.out, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="dualvae-gpu-check-")
    check = Check(os.path.abspath(args.out), args.dry, budget, write_shim(os.path.join(scratch, "shim")), scratch)
    wanted = set(args.stages.split(",")) if args.stages else None
    summary = {"check": "gpu_check", "dry": args.dry, "budget_s": budget,
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "root": ROOT}
    try:
        try:
            summary["env"] = env_info(check)
            check.stages.append({"stage": "env", "verdict": "pass", "reason": "",
                                 "seconds": round(time.monotonic() - check.t0, 1)})
        except Exception as exc:
            summary["env"] = None
            check.stages.append({"stage": "env", "verdict": "fail", "reason": str(exc), "seconds": 0.0})
        if not args.dry and summary["env"] and not summary["env"]["cuda_available"]:
            check.stages[-1].update(verdict="fail",
                                    reason="no CUDA device visible to torch: run the real check on a GPU host "
                                           "(or --dry for the CPU form)")
        env_ok = check.stages[-1]["verdict"] == "pass"
        check.say(f"== env: {json.dumps(summary['env'])}")
        plan = [("tests", lambda left: stage_tests(check, left)),
                ("kernels", lambda left: stage_kernels(check, left)),
                ("linear_bce", lambda left: stage_linear_bce(check, left)),
                ("train", lambda left: stage_train(check, left)),
                ("data", lambda left: stage_data(check, left, args.cache)),
                ("ext", lambda left: stage_ext(check, left))]
        for name, fn in plan:
            if wanted is not None and name not in wanted:
                check.stages.append({"stage": name, "verdict": "skipped", "reason": "not in --stages", "seconds": 0.0})
                continue
            if not env_ok:
                check.stages.append({"stage": name, "verdict": "skipped", "reason": "the env stage failed",
                                     "seconds": 0.0})
                continue
            check.stage(name, fn)
    finally:
        summary["stages"] = check.stages
        summary["elapsed_s"] = round(time.monotonic() - check.t0, 1)
        summary["ok"] = not any(s["verdict"] == "fail" for s in check.stages)
        write_text_atomic(os.path.join(check.out, "summary.json"), json.dumps(summary, indent=1))
        check.say(f"gpu_check: {'ok' if summary['ok'] else 'FAILED'} in {summary['elapsed_s']} s; wrote "
                  f"{check.out}/summary.json")
        check.log.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
