"""Compile every Triton kernel, in every launch configuration, for sm_80 and sm_90 — no GPU needed.

    python -m dualvae.kernels.compile_check [--arch 80,90] [--jobs 2]

The interpreter the tests use runs kernels as numpy code: it cannot see register pressure, spills, shared memory
or code that only the real compiler rejects. This compiles the kernels through Triton's CUDA backend
(`triton.compile` with a `GPUTarget`), reads each cubin's resource usage with the `cuobjdump` that ships inside
triton, prints one table row per (kernel, dtype, config, arch) and exits 1 on any compile failure or any spill
(LOCAL or STACK bytes above zero).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

PTR = {"fp32": "*fp32", "bf16": "*bf16", "fp16": "*fp16"}


def _dtype_name(dtype) -> str:
    import torch

    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def gpu_configs() -> dict[str, list[tuple[str, dict]]]:
    """Every (dtype, launch config) the launchers can pick on a GPU, per kernel: what this module compiles.
    Configs are chosen by shape (a table, not run-time autotuning), so this list is exhaustive."""
    import torch

    from dualvae.kernels.dual_bce_sparse import sparse_config
    from dualvae.kernels.dual_bce_triton import dual_bce_config
    from dualvae.kernels.linear_bce_triton import linear_bce_config
    from dualvae.kernels.reparam_kl import reparam_config

    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    reparam = {tuple(sorted(reparam_config(1, d, interpret=False).items())) for d in (16, 32, 64, 128)}
    bce = set()
    for dt in dtypes:
        for d in (16, 32, 64, 128, 256):  # every larger d takes the d = 256 config
            for hashed in (False, True):
                cfg = dual_bce_config(1, 1, d, dt, interpret=False, hashed=hashed)
                cfg = {**cfg, "ONE_K": d <= cfg["BLOCK_K"], "hashed": hashed}
                bce.add((_dtype_name(dt), tuple(sorted(cfg.items()))))
    reparam_list = [(_dtype_name(dt), dict(c)) for dt in dtypes for c in sorted(reparam)]
    bce_list = [(name, dict(c)) for name, c in sorted(bce)]
    linear = set()
    for dt in dtypes:
        for d in (16, 32, 64, 128, 256):
            for hashed in (False, True):
                cfg = linear_bce_config(1, 1, d, dt, interpret=False, hashed=hashed)
                cfg = {**cfg, "ONE_K": d <= cfg["BLOCK_K"], "hashed": hashed}
                linear.add((_dtype_name(dt), tuple(sorted(cfg.items()))))
    linear_list = [(name, dict(c)) for name, c in sorted(linear)]
    # The sparse correction kernels gather rows of U (z): elementwise loads and sums, fp16 compiles to bf16's
    # code but for the conversions.
    sparse = {tuple(sorted(sparse_config(d, interpret=False).items())) for d in (16, 32, 64, 128)}
    sparse_list = [(_dtype_name(dt), dict(c)) for dt in (torch.float32, torch.bfloat16) for c in sorted(sparse)]
    return {"reparam_kl_fwd": reparam_list, "reparam_kl_bwd": reparam_list,
            "dual_bce_fwd": bce_list, "dual_bce_bwd": bce_list,
            "linear_bce_fwd": linear_list, "linear_bce_bwd": linear_list,
            "sparse_rows": sparse_list, "sparse_cols": sparse_list}


def _jobs(arches: list[int]) -> list[dict]:
    jobs = []
    for kernel, entries in gpu_configs().items():
        for dtype, cfg in entries:
            if kernel.startswith("reparam") and dtype == "fp16":
                continue  # elementwise: fp16 compiles to bf16's code but for the conversions; bf16 stands for both
            variants = [{}]
            if kernel.startswith("dual_bce"):
                # Packed labels change only the label loads, the same code for every dtype: compiled with fp32.
                # The hashed mask (its own configs) adds integer work per entry to the tile: dense labels with
                # it (the most registers: label loads and the hash) for fp32 and bf16 (fp16 is bf16's code but
                # for the conversions), sparse labels with it for fp32.
                if cfg["hashed"]:
                    variants = ([{"HASHED": True}] if dtype != "fp16" else []) + (
                        [{"SPARSE": True, "HASHED": True}] if dtype == "fp32" else [])
                else:
                    variants = [{"PACKED": False}] + ([{"PACKED": True}] if dtype == "fp32" else [])
            elif kernel.startswith("linear_bce"):
                # Every option on (pos_weight, label_weight, smoothing: the most registers) with dense targets
                # and a dense or (its configs) hashed mask, for fp32 and bf16 (fp16 is bf16's code but for the
                # conversions); packed targets change only the label loads, as for dual_bce.
                if dtype == "fp16":
                    variants = []
                elif cfg["hashed"]:
                    variants = [{"HASHED": True, "OPTIONS": True}]
                else:
                    variants = [{"OPTIONS": True}] + ([{"PACKED": True, "OPTIONS": True}] if dtype == "fp32" else [])
            elif kernel.startswith("sparse"):
                variants = [{"HASHED": True}]
            for variant in variants:
                for arch in arches:
                    jobs.append({"kernel": kernel, "dtype": dtype, "cfg": cfg, "variant": variant, "arch": arch})
    return jobs


def _strides(names: str, unit: tuple[str, ...]) -> tuple[dict, dict]:
    """Signature and constexprs of stride arguments as a launch on contiguous tensors specialises them: the
    ones in `unit` are 1 (triton bakes an int argument equal to 1 into the code), the others runtime i32."""
    sig, const = {}, {}
    for name in names.split():
        if name in unit:
            sig[name], const[name] = "constexpr", 1
        else:
            sig[name] = "i32"
    return sig, const


def _source(kernel: str, dtype: str, cfg: dict, variant: dict):
    from triton.compiler import ASTSource

    from dualvae.kernels.dual_bce_triton import _dual_bce_bwd_kernel, _dual_bce_fwd_kernel
    from dualvae.kernels.reparam_kl import _reparam_kl_bwd_kernel, _reparam_kl_fwd_kernel

    from dualvae.kernels.dual_bce_sparse import _sparse_cols_kernel, _sparse_rows_kernel
    from dualvae.kernels.linear_bce_triton import _linear_bce_bwd_kernel, _linear_bce_fwd_kernel

    t = PTR[dtype]
    blocks = {k: v for k, v in cfg.items() if k.startswith("BLOCK_") or k == "ONE_K"}  # not "hashed"
    hash_sig = {"mask_key": "i32", "mask_thr": "i32", "mask_off": "i32"}
    if kernel == "reparam_kl_fwd":
        sig = {"mu_ptr": t, "logvar_ptr": t, "eps_ptr": t, "z_ptr": t, "kl_ptr": "*fp32", "B": "i32", "D": "i32",
               "seed": "i64", "offset": "i64"}
        ssig, sconst = _strides("stride_mu_b stride_mu_d stride_lv_b stride_lv_d stride_eps_b stride_eps_d "
                                "stride_z_b stride_z_d", unit=("stride_mu_d", "stride_lv_d", "stride_eps_d",
                                                               "stride_z_d"))
        const = {"HAS_EPS": False, **blocks}  # in-kernel Philox: the heavier path
        fn = _reparam_kl_fwd_kernel
    elif kernel == "reparam_kl_bwd":
        sig = {"dz_ptr": t, "dkl_ptr": "*fp32", "mu_ptr": t, "logvar_ptr": t, "eps_ptr": t, "dmu_ptr": t,
               "dlogvar_ptr": t, "deps_ptr": t, "B": "i32", "D": "i32", "seed": "i64", "offset": "i64"}
        names = ("stride_dz_b stride_dz_d stride_mu_b stride_mu_d stride_lv_b stride_lv_d stride_eps_b stride_eps_d "
                 "stride_dmu_b stride_dmu_d stride_dlv_b stride_dlv_d stride_deps_b stride_deps_d stride_dkl")
        ssig, sconst = _strides(names, unit=tuple(n for n in names.split() if n.endswith("_d") or n == "stride_dkl"))
        const = {"HAS_EPS": False, "NEED_DEPS": False, **blocks}
        fn = _reparam_kl_bwd_kernel
    elif kernel == "sparse_rows":
        sig = {"z_ptr": t, "u_ptr": t, "b_ptr": t, "idx_ptr": "*i32", "indptr_ptr": "*i64", "m_ptr": "*fp32",
               "mr_ptr": "*i64", "loss_ptr": "*fp32", "dz_ptr": "*fp32", "D": "i32"}
        names = "stride_z_b stride_z_d stride_u_n stride_u_d stride_b stride_m_b stride_m_n"
        ssig, sconst = _strides(names, unit=("stride_z_d", "stride_u_d", "stride_b", "stride_m_n"))
        ssig.update(hash_sig)
        const = {"HAS_BIAS": True, "HAS_MASK": False, "HASHED": variant["HASHED"], "NEED_DZ": True, **blocks}
        fn = _sparse_rows_kernel
    elif kernel == "sparse_cols":
        sig = {"z_ptr": t, "colptr_ptr": "*i64", "crow_ptr": "*i64", "m_ptr": "*fp32", "mr_ptr": "*i64",
               "gscale_ptr": "*fp32", "du_ptr": "*fp32", "db_ptr": "*fp32", "D": "i32"}
        names = "stride_z_b stride_z_d stride_m_b stride_m_n stride_g"
        ssig, sconst = _strides(names, unit=("stride_z_d", "stride_m_n"))
        ssig.update(hash_sig)
        const = {"HAS_MASK": False, "HASHED": variant["HASHED"], "NEED_DB": True, **blocks}
        fn = _sparse_cols_kernel
    else:
        packed = variant.get("PACKED", False)
        sparse = variant.get("SPARSE", False)
        hashed = variant.get("HASHED", False)
        lab = "*i32" if packed else "*fp32"
        common = {"z_ptr": t, "u_ptr": t, "b_ptr": t, "y_ptr": lab, "m_ptr": lab, "mr_ptr": "*i64"}
        names = "stride_z_b stride_z_d stride_u_n stride_u_d stride_b stride_y_b stride_y_n stride_m_b stride_m_n"
        unit = ("stride_z_d", "stride_u_d", "stride_b", "stride_y_n", "stride_m_n")
        flags = {"HAS_BIAS": True, "HAS_MASK": not (packed or hashed), "MASK_LIKE_Y": True, "PACKED": packed,
                 "SPARSE": sparse, "HASHED": hashed}
        options = variant.get("OPTIONS", False)
        if options:  # linear_bce: per-label pos_weight and label_weight, smoothing's two fp32 scalars
            common.update({"pw_ptr": t, "lw_ptr": t})
            names += " stride_pw stride_lw"
            unit += ("stride_pw", "stride_lw")
            flags.update({"HAS_POS_W": True, "HAS_LABEL_W": True, "SMOOTH": True})
        if kernel == "dual_bce_fwd":
            sig = {**common, "loss_ptr": "*fp32", "cnt_ptr": "*fp32", "dz_ptr": "*fp32", "bad_ptr": "*i32",
                   "B": "i32", "N": "i32", "D": "i32", "n_per_split": "i32"}
            const = {**flags, "NEED_DZ": True}
            fn = _dual_bce_fwd_kernel
        elif kernel == "linear_bce_fwd":
            sig = {**common, "loss_ptr": "*fp32", "dz_ptr": "*fp32", "bad_ptr": "*i32",
                   "B": "i32", "N": "i32", "D": "i32", "n_per_split": "i32"}
            const = {**flags, "NEED_DZ": True}
            fn = _linear_bce_fwd_kernel
        elif kernel == "linear_bce_bwd":
            sig = {**common, "gscale_ptr": "*fp32", "du_ptr": "*fp32", "db_ptr": "*fp32", "B": "i32", "N": "i32",
                   "D": "i32", "b_per_split": "i32"}
            names += " stride_g"
            const = {**flags, "NEED_DB": True}
            fn = _linear_bce_bwd_kernel
        else:
            sig = {**common, "gscale_ptr": "*fp32", "du_ptr": "*fp32", "db_ptr": "*fp32", "B": "i32", "N": "i32",
                   "D": "i32", "b_per_split": "i32"}
            names += " stride_g"  # a scalar upstream gradient is read expanded, stride 0: not specialised
            const = {**flags, "NEED_DB": True}
            fn = _dual_bce_bwd_kernel
        ssig, sconst = _strides(names, unit)
        ssig.update(hash_sig)
        if options:
            ssig.update({"smooth_a": "fp32", "smooth_c": "fp32"})
        const.update({"PRECISION": "tf32x3" if dtype == "fp32" else "ieee", **blocks})
    sig.update(ssig)
    const.update(sconst)
    for name in const:
        sig[name] = "constexpr"
    # the compiled variant whatever TRITON_INTERPRET says: triton.compile needs a JITFunction
    return ASTSource(fn=fn.variant(interpret=False), signature=sig, constexprs=const)


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _usage(cubin: bytes) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    get = lambda key: int(re.search(rf"\b{key}:(\d+)", line).group(1))  # noqa: E731
    return {"regs": get("REG"), "stack": get("STACK"), "local": get("LOCAL"), "shared_static": get("SHARED")}


def compile_one(job: dict) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget

    row = {**job, "ok": False, "error": None}
    start = time.perf_counter()
    try:
        src = _source(job["kernel"], job["dtype"], job["cfg"], job["variant"])
        from dualvae.kernels._jit import LAUNCH_OPTIONS

        opts = {"num_warps": job["cfg"]["num_warps"], "num_stages": job["cfg"].get("num_stages", 3),
                **LAUNCH_OPTIONS}
        compiled = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=opts)
        row.update(_usage(compiled.asm["cubin"]))
        row["shared"] = int(compiled.metadata.shared)
        row["ok"] = True
    except Exception as exc:  # report every failure in the table, not just the first
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    row["seconds"] = time.perf_counter() - start
    return row


def _fmt_cfg(row: dict) -> str:
    c = row["cfg"]
    parts = [f"{k.removeprefix('BLOCK_')}={v}" for k, v in c.items() if k.startswith("BLOCK_")]
    parts += ["K-loop"] if c.get("ONE_K") is False else []
    parts += [f"w{c['num_warps']}"] + ([f"s{c['num_stages']}"] if "num_stages" in c else [])
    parts += [name.lower() for name in ("PACKED", "SPARSE", "HASHED", "OPTIONS") if row["variant"].get(name)]
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualvae.kernels.compile_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="80,90", help="comma-separated SM versions (default 80,90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--only", default="", help="compile only the rows whose kernel name or variant "
                                                   "contains this word (e.g. sparse, hashed)")
    args = parser.parse_args(argv)
    arches = [int(a) for a in args.arch.split(",")]
    jobs = [j for j in _jobs(arches) if not args.only or args.only in j["kernel"]
            or args.only.upper() in {k for k, v in j["variant"].items() if v}]
    start = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(compile_one, jobs))
    else:
        rows = [compile_one(j) for j in jobs]
    header = f"{'kernel':<16} {'dtype':<5} {'config':<34} {'arch':>5} {'regs':>5} {'spill':>6} {'smem':>7}  status"
    print(header)
    print("-" * len(header))
    bad = 0
    for r in rows:
        spill = r.get("local", 0) + r.get("stack", 0) if r["ok"] else 0
        status = "ok" if r["ok"] and spill == 0 else ("SPILL" if r["ok"] else f"FAIL {r['error']}")
        bad += status != "ok"
        regs = r.get("regs", "-")
        smem = r.get("shared", "-")
        print(f"{r['kernel']:<16} {r['dtype']:<5} {_fmt_cfg(r):<34} sm_{r['arch']:<2} {regs:>5} {spill:>6} "
              f"{smem:>7}  {status}")
    print(f"{len(rows)} compiles in {time.perf_counter() - start:.0f} s: "
          f"{len(rows) - bad} ok, {bad} failed or spilled")
    return 1 if bad else 0


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        # triton.language itself reads the variable while it builds the IR (its builtins take the interpreter's
        # path), so compiling for a GPU target fails under it: the compile runs in a child without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        sys.exit(subprocess.run([sys.executable, "-m", "dualvae.kernels.compile_check", *sys.argv[1:]],
                                env=env).returncode)
    sys.exit(main())
