"""linear_binary_cross_entropy_with_logits and LinearBCEWithLogits against float64 PyTorch
(F.binary_cross_entropy_with_logits of F.linear), forward and backward, on every backend (the `backend`
fixture); the fused backends run float32 and are held to float32's accuracy."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dualvae.kernels import (HashedMask, LinearBCEWithLogits, SparseLabels, linear_binary_cross_entropy_with_logits,
                             pack_labels)

from kernel_cases import require_backend

lbce = linear_binary_cross_entropy_with_logits


@pytest.fixture(params=["reference", "cpu", "triton"])
def backend(request):
    return require_backend(request.param)


def torch_f64(x, W, y, b, *, pos_weight=None, label_weight=None, mask=None, label_smoothing=0.0,
              reduction="mean"):
    """The definition, in PyTorch's own ops (float64)."""
    t = y.double() * (1 - label_smoothing) + label_smoothing / 2
    per = F.binary_cross_entropy_with_logits(F.linear(x, W, b), t, weight=label_weight, pos_weight=pos_weight,
                                             reduction="none")
    if mask is not None:
        per = per * mask.double()
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.sum() / per.numel()


def make(B, n, d, *, seed=0, scale=1.0, soft=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=torch.float64) * scale
    W = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.rand(B, n, generator=g, dtype=torch.float64)
    if soft:  # exact 0s and 1s among values between
        y = torch.where(y < 0.25, 0.0, torch.where(y > 0.75, 1.0, y))
    else:
        y = (y > 0.5).double()
    return x, W, y, b, g


OPTIONS = {
    "plain": {},
    "pos_weight_fractional": {"pos_weight": "frac"},
    "pos_weight_zero": {"pos_weight": "zero"},
    "pos_weight_huge": {"pos_weight": "huge"},
    "label_weight_with_zeros": {"label_weight": "zeros"},
    "smoothing": {"label_smoothing": 0.1},
    "mask_random": {"mask": "random"},
    "mask_all_zero": {"mask": "zero"},
    "mask_all_one": {"mask": "one"},
    "everything": {"pos_weight": "frac", "label_weight": "zeros", "mask": "random", "label_smoothing": 0.2},
}


def options(name, B, n, g):
    out = {}
    for key, kind in OPTIONS[name].items():
        if key == "pos_weight":
            out[key] = {"frac": torch.rand(n, generator=g, dtype=torch.float64) * 3,
                        "zero": torch.zeros(n, dtype=torch.float64),
                        "huge": torch.full((n,), 1e4, dtype=torch.float64)}[kind]
        elif key == "label_weight":
            w = torch.rand(n, generator=g, dtype=torch.float64) * 2
            out[key] = torch.where(torch.arange(n) % 3 == 0, 0.0, w)
        elif key == "mask":
            out[key] = {"random": (torch.rand(B, n, generator=g) > 0.4).double(),
                        "zero": torch.zeros(B, n, dtype=torch.float64),
                        "one": torch.ones(B, n, dtype=torch.float64)}[kind]
        else:
            out[key] = kind
    return out


def run(backend, x, W, y, b, reduction, opts, dtype=torch.float32):
    """(loss, dx, dW, db) of the op on `backend` (float32 on the fused ones) and of float64 PyTorch."""
    if backend == "reference":
        dtype = torch.float64
    ins = [t.to(dtype).requires_grad_() for t in (x, W, b)]
    cast = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    out = lbce(ins[0], ins[1], y.to(dtype), ins[2], reduction=reduction, backend=backend, **cast)
    ref_ins = [t.clone().requires_grad_() for t in (x, W, b)]
    ref = torch_f64(ref_ins[0], ref_ins[1], y, ref_ins[2], reduction=reduction, **opts)
    go = torch.randn_like(ref)
    grads = torch.autograd.grad(out, ins, go.to(out.dtype)) if out.requires_grad else (None,) * 3
    ref_grads = torch.autograd.grad(ref, ref_ins, go)
    return out, grads, ref, ref_grads


def close(got, want, scale=1.0):
    torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-5 * scale)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_matches_float64_pytorch(name, reduction, backend):
    B, n, d = 37, 53, 20
    x, W, y, b, g = make(B, n, d)
    opts = options(name, B, n, g)
    out, grads, ref, ref_grads = run(backend, x, W, y, b, reduction, opts)
    scale = 1e4 if name == "pos_weight_huge" else 1.0
    close(out, ref, scale * (B * n if reduction == "sum" else 1))
    for got, want in zip(grads, ref_grads):
        close(got, want, scale)


@pytest.mark.parametrize("B,n,d", [(1, 1, 1), (5, 3, 7), (2, 70, 3), (17, 33, 130)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_odd_shapes(B, n, d, reduction, backend):
    x, W, y, b, g = make(B, n, d, seed=B + n)
    opts = options("everything", B, n, g)
    out, grads, ref, ref_grads = run(backend, x, W, y, b, reduction, opts)
    close(out, ref, B * n)
    for got, want in zip(grads, ref_grads):
        close(got, want)


@pytest.mark.parametrize("pos_weight", [False, True])
def test_extreme_logits_stay_finite(pos_weight, backend):
    B, n, d = 6, 10, 4
    x, W, y, b, g = make(B, n, d, scale=300.0)
    opts = {"pos_weight": torch.rand(n, generator=g, dtype=torch.float64) * 2} if pos_weight else {}
    out, grads, ref, ref_grads = run(backend, x, W, y, b, "sum", opts)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-2)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-1)


def test_without_options_equals_dual_bce_sum(backend):
    """No option on: the 0/1 unweighted sum is dual_bce's loss (the same kernels)."""
    from dualvae.kernels import dual_bce
    x, W, y, b, _ = make(9, 21, 5, soft=False)
    x, W, y, b = (t.float() for t in (x, W, y, b))
    torch.testing.assert_close(lbce(x, W, y, b, reduction="sum", backend=backend),
                               dual_bce(x, W, y, bias=b, reduction="sum", backend=backend).to(x.dtype if backend
                                                                                               == "reference" else
                                                                                               torch.float32))


@pytest.mark.parametrize("shape", ["()", "(1,)", "(1, n)"])
def test_weights_broadcast_as_pytorch(shape, backend):
    B, n, d = 7, 9, 3
    x, W, y, b, g = make(B, n, d)
    w = {"()": torch.tensor(1.7, dtype=torch.float64), "(1,)": torch.tensor([0.3], dtype=torch.float64),
         "(1, n)": torch.rand(1, n, generator=g, dtype=torch.float64)}[shape]
    out, _, ref, _ = run(backend, x, W, y, b, "mean", {"pos_weight": w, "label_weight": w * 2})
    close(out, ref)


@pytest.mark.parametrize("rows", [1, "n"])
def test_label_weight_with_rows_is_a_mask_factor(rows, backend):
    B, n, d = 7, 9, 3
    x, W, y, b, g = make(B, n, d)
    lw = torch.rand(B, 1 if rows == 1 else n, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, n, generator=g) > 0.3).double()
    out, grads, ref, ref_grads = run(backend, x, W, y, b, "sum", {"label_weight": lw, "mask": mask})
    close(out, ref, B * n)
    for got, want in zip(grads, ref_grads):
        close(got, want)


def test_label_formats(backend):
    """PackedLabels (with their mask), SparseLabels and a HashedMask mean their dense matrices; SparseLabels on
    triton are refused by name."""
    B, n, d = 11, 40, 6
    x, W, y, b, g = make(B, n, d, soft=False)
    mask = (torch.rand(B, n, generator=g) > 0.3).double()
    pw = torch.rand(n, generator=g, dtype=torch.float64) * 2
    hashed = HashedMask(3, 0.3, torch.arange(100, 100 + B))
    xf, Wf, bf = (t.float() for t in (x, W, b))
    dt = torch.float64 if backend == "reference" else torch.float32
    xf, Wf, bf, pwf = (t.to(dt) for t in (x, W, b, pw))
    common = dict(pos_weight=pwf, label_smoothing=0.1, reduction="sum", backend=backend)
    want = torch_f64(x, W, y, b, pos_weight=pw, mask=mask, label_smoothing=0.1, reduction="sum")
    close(lbce(xf, Wf, pack_labels(y, mask), bf, **common), want, B * n)
    want_h = torch_f64(x, W, y, b, pos_weight=pw, mask=hashed.dense(n), label_smoothing=0.1, reduction="sum")
    close(lbce(xf, Wf, y.to(dt), bf, mask=hashed, **common), want_h, B * n)
    sparse = SparseLabels.from_dense(y)
    if backend == "triton":
        with pytest.raises(ValueError, match="SparseLabels are not supported by backend 'triton'"):
            lbce(xf, Wf, sparse, bf, **common)
    else:
        close(lbce(xf, Wf, sparse, bf, mask=hashed, **common), want_h, B * n)


def test_bad_input_raises_clear_errors(backend):
    x, W, y, b = (t.float() for t in make(4, 5, 3)[:4])
    call = lambda **kw: lbce(**{"input": x, "weight": W, "target": y, "bias": b, "backend": backend, **kw})  # noqa
    cases = [
        (dict(weight=W[:, :2]), r"weight has shape \(5, 2\), expected \(n, 3\)"),
        (dict(target=y[:, :4]), r"y has shape \(4, 4\), expected \(4, 5\)"),
        (dict(bias=b[:3]), r"bias has shape \(3,\), expected \(5,\)"),
        (dict(input=x.long()), "input must be a floating tensor"),
        (dict(pos_weight=-torch.ones(5)), "pos_weight must be >= 0"),
        (dict(label_weight=torch.tensor([1.0, 0.0, -2.0, 1.0, 1.0])), "label_weight must be >= 0"),
        (dict(mask=-torch.ones(4, 5)), "mask must be >= 0"),
        (dict(pos_weight=torch.ones(4)), r"pos_weight has shape \(4,\), expected one that broadcasts"),
        (dict(target=y * 2), r"target must hold values in \[0, 1\]"),
        (dict(target=y - 1), r"target must hold values in \[0, 1\]"),
        (dict(label_smoothing=1.5), r"label_smoothing must be a float in \[0, 1\]"),
        (dict(reduction="avg"), "reduction must be one of"),
        (dict(bias=b.to("meta")), "tensors must be on one device"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            call(**kw)


def test_bad_backend_and_dtype():
    x, W, y, b = (t.float() for t in make(4, 5, 3)[:4])
    with pytest.raises(ValueError, match="backend must be one of"):
        lbce(x, W, y, b, backend="gpu")
    if require_backend("cpu"):
        with pytest.raises(ValueError, match="backend 'cpu' takes float32"):
            lbce(x.double(), W.double(), y, b.double(), backend="cpu")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_opcheck(reduction, backend):
    if backend == "reference":
        pytest.skip("the reference is plain torch ops")
    from dualvae.kernels.labels import label_args
    x, W, y, b, g = (t.float() if isinstance(t, torch.Tensor) else t for t in make(6, 9, 4))
    pw, lw = torch.rand(9) + 0.5, torch.rand(9)
    for grads_in_fwd in ([False, True] if backend == "cpu" else [False]):
        args = label_args("t", y, torch.ones(6, 9), x, 9)
        kwargs = dict(input=x.requires_grad_(), weight=W.requires_grad_(), **args._asdict(),
                      bias=b.requires_grad_(), n=9, pos_weight=pw, label_weight=lw, label_smoothing=0.1,
                      loss_scale=1.0 if reduction == "sum" else 1 / 54, need_dz=True, grads_in_fwd=grads_in_fwd,
                      backend=backend, check_targets=True)
        torch.library.opcheck(torch.ops.dualvae.linear_bce.default, (), kwargs)
    bwd = dict(gscale=torch.rand(6), input=x.detach(), weight=W.detach(), **args._asdict(), bias=b.detach(), n=9,
               pos_weight=pw, label_weight=lw, label_smoothing=0.1, need_db=True, backend=backend)
    torch.library.opcheck(torch.ops.dualvae.linear_bce_backward.default, (), bwd)


def test_torch_compile_fullgraph(backend):
    if backend == "reference":
        pytest.skip("the reference is plain torch ops")
    x, W, y, b = (t.float() for t in make(6, 9, 4)[:4])
    pw = torch.rand(9) + 0.5

    def step(x, W, b):
        return lbce(x, W, y, b, pos_weight=pw, label_smoothing=0.1, backend=backend)

    ins = [t.clone().requires_grad_() for t in (x, W, b)]
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(*ins)
    grads = torch.autograd.grad(out, ins)
    ins2 = [t.clone().requires_grad_() for t in (x, W, b)]
    out2 = step(*ins2)
    torch.testing.assert_close(out, out2)
    for a, c in zip(grads, torch.autograd.grad(out2, ins2)):
        torch.testing.assert_close(a, c)


def test_module_is_a_drop_in_for_linear_and_bcewithlogitsloss(backend):
    torch.manual_seed(0)
    n, d = 12, 8
    pw = torch.rand(n) * 2
    linear, loss_fn = nn.Linear(d, n), nn.BCEWithLogitsLoss(pos_weight=pw)
    head = LinearBCEWithLogits(d, n, pos_weight=pw, backend=backend)
    head.load_state_dict({**linear.state_dict(), "pos_weight": pw}, strict=False)
    x, y = torch.randn(5, d), (torch.rand(5, n) > 0.5).float()
    want = loss_fn(linear(x), y)
    got = head(x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.backward()
    want.backward()
    torch.testing.assert_close(head.weight.grad, linear.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.bias.grad, linear.bias.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.logits(x), linear(x))
    assert set(head.state_dict()) == {"weight", "bias", "pos_weight"}
    with pytest.raises(ValueError, match="reduction must be one of"):
        LinearBCEWithLogits(d, n, reduction="avg")


def check_cpu_build(isa):
    """Every option at once, on several tiles with rows that are no multiple of the vector width, on the C++
    build `isa` (the one this process runs), against float64 PyTorch; soft targets, packed labels, hashed mask."""
    from dualvae import kernels
    assert kernels.cpu_isa() == isa, (kernels.cpu_isa(), isa)
    B, n, d = 300, 701, 19
    for reduction in ("sum", "mean"):
        x, W, y, b, g = make(B, n, d, seed=5)
        opts = options("everything", B, n, g)
        out, grads, ref, ref_grads = run("cpu", x, W, y, b, reduction, opts)
        close(out, ref, B * n if reduction == "sum" else 1)
        for got, want in zip(grads, ref_grads):
            close(got, want, 10)
    x, W, y, b, g = make(B, n, d, seed=6, soft=False)
    mask = (torch.rand(B, n, generator=g) > 0.3).double()
    pw = torch.rand(n, generator=g, dtype=torch.float64) * 2
    want = torch_f64(x, W, y, b, pos_weight=pw, mask=mask, label_smoothing=0.1, reduction="sum")
    got = lbce(x.float(), W.float(), pack_labels(y, mask), b.float(), pos_weight=pw.float(), label_smoothing=0.1,
               reduction="sum", backend="cpu")
    close(got, want, B * n)


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512"])
def test_every_cpu_build(isa):
    import os
    import subprocess
    import sys

    from test_fused_ops import _skip_unless_cpu_runs
    require_backend("cpu")
    _skip_unless_cpu_runs(isa)
    here = os.path.dirname(os.path.abspath(__file__))
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_linear_bce as t; t.check_cpu_build(sys.argv[2])"
    run_ = subprocess.run([sys.executable, "-c", code, here, isa], env=dict(os.environ, DUALVAE_CPU_ISA=isa),
                          capture_output=True, text=True, timeout=300)
    assert run_.returncode == 0, f"DUALVAE_CPU_ISA={isa}: {run_.stderr[-3000:]}"


@pytest.mark.parametrize("op", ["linear_bce", "dual_bce"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_eager_cpu_call_gives_the_custom_ops_bits(op, reduction):
    """An eager cpu call runs one C++ op with its autograd in C++ (bce_eager_cpu.cpp); under torch.compile the
    custom op runs. Same kernels, same scaling: the same bits, loss and gradients."""
    from dualvae.kernels import dual_bce
    require_backend("cpu")
    x, W, y, b, g = (t.float() if isinstance(t, torch.Tensor) else t for t in make(70, 300, 9, soft=op != "dual_bce"))
    mask = (torch.rand(70, 300, generator=g) > 0.3).float()
    if op == "dual_bce":
        fn = lambda x, W, b: dual_bce(x, W, y, mask, bias=b, reduction=reduction, backend="cpu")  # noqa: E731
    else:
        pw = torch.rand(300, generator=g) * 2
        fn = lambda x, W, b: lbce(x, W, y, b, pos_weight=pw, mask=mask, reduction=reduction,  # noqa: E731
                                  backend="cpu")
    results = []
    for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        ins = [t.clone().requires_grad_() for t in (x, W, b)]
        out = f(*ins)
        results.append((out, *torch.autograd.grad(out * 1.5, ins)))
    for a, c in zip(*results):
        assert torch.equal(a, c)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_plain_cpu_call_gives_the_general_paths_bits(reduction):
    """The plain eager call (contiguous CPU tensors, no options) skips the general staging: the same loss and
    gradients, bit for bit, as a call the general path takes (here: a non-contiguous target of the same values)."""
    from dualvae.kernels.linear_bce import _plain_cpu_call
    require_backend("cpu")
    x, W, y, b, _ = (t.float() if isinstance(t, torch.Tensor) else t for t in make(64, 40, 128, soft=True))
    y_strided = y.t().contiguous().t()
    assert _plain_cpu_call(x, W, y, b, None, None, None, 0.0, reduction, "auto")
    assert not _plain_cpu_call(x, W, y_strided, b, None, None, None, 0.0, reduction, "auto")
    results = []
    for target in (y, y_strided):
        ins = [t.clone().requires_grad_() for t in (x, W, b)]
        out = lbce(*ins[:2], target, ins[2], reduction=reduction)
        results.append((out, *torch.autograd.grad(out * 1.5, ins)))
    for a, c in zip(*results):
        assert torch.equal(a, c)
    with pytest.raises(ValueError, match=r"target must hold values in \[0, 1\]"):
        lbce(x, W, y + 2, b, reduction=reduction)
