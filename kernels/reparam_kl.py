"""reparameterize_kl in Triton: z = mu + exp(logvar / 2) * eps and the per-row KL to N(0, I), one pass each way.

Both kernels walk a 1-D grid of BLOCK_B-row blocks, the row in BLOCK_D-wide chunks. With no eps tensor the
kernel draws eps = randn(seed, offset + k) for element k = row * d + col of the logical row-major (B, d)
matrix (counter-based Philox and Box-Muller as tl.randn, `reference.philox_randn` to within 1e-6), and the
backward draws the very same numbers again: no B x d eps tensor is read, written or kept for the backward.

The kernels run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1. Launchers take and return plain
tensors of any strides; autograd and the torch.library registration live in `ops.py`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import LAUNCH_OPTIONS, from_triton, interpreting, jit, on_device_of

# triton's own jitted functions, rebuilt per mode (see _jit.LazyKernel); tl.sum's combine function is passed to
# tl.reduce as it is, so the interpreter still recognises the sum.
_randint4x = from_triton(tl.randint4x)
_uint_to_uniform = from_triton(tl.random.uint_to_uniform_float)
_sum_combine = tl.standard._sum_combine


@jit
def _cos_2pi(u):
    """cos(2 pi u) for u in [0, 1], from plain arithmetic. libdevice's cosf carries a Payne-Hanek reduction for
    huge arguments whose local array some ptxas releases keep as a stack frame even though an angle below 2 pi
    never takes that path. Here u - q/4 (q = round(4u)) is exact, the angle 2 pi (u - q/4) lies in
    [-pi/4, pi/4], and Taylor series to degree 8 (cos) and 9 (sin) are within 3e-8 of the truth there;
    the quadrant q picks cos, -sin, -cos or sin."""
    q = tl.floor(u * 4.0 + 0.5)
    t = (u - q * 0.25) * 6.283185307179586
    t2 = t * t
    c = 1.0 + t2 * (-0.5 + t2 * (1.0 / 24.0 + t2 * (-1.0 / 720.0 + t2 * (1.0 / 40320.0))))
    s = t * (1.0 + t2 * (-1.0 / 6.0 + t2 * (1.0 / 120.0 + t2 * (-1.0 / 5040.0 + t2 * (1.0 / 362880.0)))))
    quadrant = q.to(tl.int32) & 3
    return tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))


@jit
def _randn(seed, offset):
    """Standard normal float32 from Philox counter `offset`: tl.randn's Box-Muller on the same two uniforms,
    with the cosine of `_cos_2pi` (`reference.philox_randn`)."""
    i1, i2, _, _ = _randint4x(seed, offset)
    u1 = tl.maximum(_uint_to_uniform(i1), 1.0e-7)
    r = tl.sqrt(-2.0 * tl.log(u1))
    return r * _cos_2pi(_uint_to_uniform(i2))


@jit
def _inputs_tile(mu_ptr, logvar_ptr, eps_ptr, r64, c64, cols, ok, D, seed, offset,
                 stride_mu_b, stride_mu_d, stride_lv_b, stride_lv_d, stride_eps_b, stride_eps_d,
                 HAS_EPS: tl.constexpr):
    """(mu, logvar, eps) of one tile in fp32; eps drawn from (seed, offset + flat index) when not given, so the
    backward regenerates the forward's."""
    mu = tl.load(mu_ptr + r64 * stride_mu_b + c64 * stride_mu_d, mask=ok, other=0.0).to(tl.float32)
    lv = tl.load(logvar_ptr + r64 * stride_lv_b + c64 * stride_lv_d, mask=ok, other=0.0).to(tl.float32)
    if HAS_EPS:
        eps = tl.load(eps_ptr + r64 * stride_eps_b + c64 * stride_eps_d, mask=ok, other=0.0).to(tl.float32)
    else:
        eps = _randn(seed, offset + r64 * D + cols[None, :])
    return mu, lv, eps


@jit
def _reparam_kl_fwd_kernel(
    # Pointers
    mu_ptr, logvar_ptr, eps_ptr, z_ptr, kl_ptr,
    # Sizes
    B, D, seed, offset,
    # Strides (rows, columns) of each (B, d) tensor
    stride_mu_b, stride_mu_d, stride_lv_b, stride_lv_d, stride_eps_b, stride_eps_d, stride_z_b, stride_z_d,
    # Meta-parameters
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """z = mu + exp(lv / 2) * eps, kl_b = 1/2 sum_k (mu^2 + exp(lv) - 1 - lv).

    Bytes moved: reads mu, logvar (and eps when given), writes z: (3 or 4) * B * d * elem + 4 B for the KL.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r64 = rows[:, None].to(tl.int64)
    kl = tl.full([BLOCK_B], 0, dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols[None, :] < D)
        c64 = cols[None, :].to(tl.int64)
        mu, lv, eps = _inputs_tile(mu_ptr, logvar_ptr, eps_ptr, r64, c64, cols, ok, D, seed, offset,
                                   stride_mu_b, stride_mu_d, stride_lv_b, stride_lv_d, stride_eps_b, stride_eps_d,
                                   HAS_EPS)
        std = tl.exp(0.5 * lv)
        tl.store(z_ptr + r64 * stride_z_b + c64 * stride_z_d, (mu + std * eps).to(z_ptr.dtype.element_ty), mask=ok)
        kl += tl.reduce(tl.where(ok, mu * mu + std * std - 1.0 - lv, 0.0), 1, _sum_combine)
    tl.store(kl_ptr + rows, 0.5 * kl, mask=row_ok)


@jit
def _reparam_kl_bwd_kernel(
    # Pointers
    dz_ptr, dkl_ptr, mu_ptr, logvar_ptr, eps_ptr, dmu_ptr, dlogvar_ptr, deps_ptr,
    # Sizes
    B, D, seed, offset,
    # Strides: (rows, columns) of each (B, d) tensor, and of the (B,) upstream KL gradient
    stride_dz_b, stride_dz_d, stride_mu_b, stride_mu_d, stride_lv_b, stride_lv_d, stride_eps_b, stride_eps_d,
    stride_dmu_b, stride_dmu_d, stride_dlv_b, stride_dlv_d, stride_deps_b, stride_deps_d, stride_dkl,
    # Meta-parameters
    HAS_EPS: tl.constexpr, NEED_DEPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """dmu = dz + dkl * mu, dlogvar = 1/2 (dz * eps * std + dkl * (std^2 - 1)), deps = dz * std.

    Bytes moved: reads dz, mu, logvar (eps when given), writes dmu, dlogvar (deps when asked): 5 to 7 B x d
    tensors, plus the (B,) KL gradient.
    """
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    r64 = rows[:, None].to(tl.int64)
    dkl = tl.load(dkl_ptr + rows.to(tl.int64) * stride_dkl, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols[None, :] < D)
        c64 = cols[None, :].to(tl.int64)
        dz = tl.load(dz_ptr + r64 * stride_dz_b + c64 * stride_dz_d, mask=ok, other=0.0).to(tl.float32)
        mu, lv, eps = _inputs_tile(mu_ptr, logvar_ptr, eps_ptr, r64, c64, cols, ok, D, seed, offset,
                                   stride_mu_b, stride_mu_d, stride_lv_b, stride_lv_d, stride_eps_b, stride_eps_d,
                                   HAS_EPS)
        std = tl.exp(0.5 * lv)
        tl.store(dmu_ptr + r64 * stride_dmu_b + c64 * stride_dmu_d, (dz + dkl * mu).to(dmu_ptr.dtype.element_ty),
                 mask=ok)
        dlv = 0.5 * (dz * eps * std + dkl * (std * std - 1.0))
        tl.store(dlogvar_ptr + r64 * stride_dlv_b + c64 * stride_dlv_d, dlv.to(dlogvar_ptr.dtype.element_ty),
                 mask=ok)
        if NEED_DEPS:
            tl.store(deps_ptr + r64 * stride_deps_b + c64 * stride_deps_d, (dz * std).to(deps_ptr.dtype.element_ty),
                     mask=ok)


def reparam_config(B: int, D: int, interpret: bool | None = None) -> dict:
    """Block shape for a (B, D) reparameterization: 1024 elements a program (8 a thread: Philox's ten rounds keep
    many values live; 4096 elements a program spill), whole rows up to d = 128, else the row in 128 chunks.
    interpret: the interpreter's small blocks (default: whether TRITON_INTERPRET asks for it now)."""
    if interpreting() if interpret is None else interpret:
        return {"BLOCK_B": 8, "BLOCK_D": min(64, triton.next_power_of_2(max(D, 1))), "num_warps": 4}
    block_d = min(128, triton.next_power_of_2(max(D, 16)))
    return {"BLOCK_B": 1024 // block_d, "BLOCK_D": block_d, "num_warps": 4}


def reparam_kl_fwd(mu, logvar, eps, seed: int, offset: int):
    """(z like mu, kl (B,) float32) for (B, d) mu, logvar and eps (None: drawn from (seed, offset))."""
    B, D = mu.shape
    z = torch.empty_like(mu)
    kl = torch.empty(B, dtype=torch.float32, device=mu.device)
    if B == 0:
        return z, kl
    cfg = reparam_config(B, D)
    e = eps if eps is not None else mu  # an unread stand-in keeps the argument list fixed
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    with on_device_of(mu):
        _reparam_kl_fwd_kernel[grid](
            mu, logvar, e, z, kl,
            B, D, seed, offset,
            *mu.stride(), *logvar.stride(), *e.stride(), *z.stride(),
            HAS_EPS=eps is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
            **LAUNCH_OPTIONS,
        )
    return z, kl


def reparam_kl_bwd(dz, dkl, mu, logvar, eps, seed: int, offset: int, need_deps: bool):
    """(dmu, dlogvar like mu and logvar, deps like mu or None) for upstream gradients dz (B, d) and dkl (B,)."""
    B, D = mu.shape
    dmu, dlogvar = torch.empty_like(mu), torch.empty_like(logvar)
    deps = torch.empty_like(mu) if need_deps else None
    if B == 0:
        return dmu, dlogvar, deps
    cfg = reparam_config(B, D)
    e = eps if eps is not None else mu
    de = deps if need_deps else dmu
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    with on_device_of(mu):
        _reparam_kl_bwd_kernel[grid](
            dz, dkl, mu, logvar, e, dmu, dlogvar, de,
            B, D, seed, offset,
            *dz.stride(), *mu.stride(), *logvar.stride(), *e.stride(), *dmu.stride(), *dlogvar.stride(),
            *de.stride(), dkl.stride(0),
            HAS_EPS=eps is not None, NEED_DEPS=need_deps,
            BLOCK_B=cfg["BLOCK_B"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"], **LAUNCH_OPTIONS,
        )
    return dmu, dlogvar, deps
