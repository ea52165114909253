"""The fused ops' autograd without the torch.library layers, for eager calls.

Each fused op is a torch.library custom op with a registered autograd (ops.py, linear_bce.py): what
torch.compile and opcheck need. In eager mode those layers cost more than a small problem's arithmetic (the
Python autograd kernel, a redispatch and the op's Python body: ~0.1 ms a call, against eager PyTorch's 0.2 ms for
a whole 64 x 40 head), so an eager call runs the same body, setup_context and backward through a plain
autograd.Function instead: the same functions, so the same results, bit for bit. Under torch.compile (while
dynamo traces) the custom op runs, a single node of the graph.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch


class _Eager(torch.autograd.Function):
    """forward(ctx, *inputs, op) = op.impl(*inputs), then the op's own setup_context; its backward (op last, so
    ctx.needs_input_grad lines up with the op's inputs). The combined forward(ctx, ...) form: with a separate
    setup_context, Function.apply binds the arguments through inspect.signature on every call."""

    @staticmethod
    def forward(ctx, *args):
        *inputs, op = args
        output = op.impl(*inputs)
        ctx.fused_op, ctx.eager = op, True  # the backward may read values back (ctx.eager: not being traced)
        op.setup(ctx, tuple(inputs), output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        return (*ctx.fused_op.backward(ctx, *grads), None)


class FusedOp:
    """A custom op with autograd, callable by keyword: the custom op while torch.compile traces, else its body
    through _Eager (with grad mode off, the body alone)."""

    def __init__(self, name: str, impl: Callable, setup: Callable, backward: Callable, fake: Callable):
        self.impl, self.setup, self.backward = impl, setup, backward
        self.params = tuple(inspect.signature(impl).parameters)
        self.op = torch.library.custom_op(name, mutates_args=())(impl)
        self.op.register_fake(fake)
        self.op.register_autograd(backward, setup_context=setup)

    def __call__(self, **kwargs):
        if torch.compiler.is_compiling():
            return self.op(**kwargs)
        args = [kwargs[p] for p in self.params]
        if not torch.is_grad_enabled():
            return self.impl(*args)
        return _Eager.apply(*args, self)
