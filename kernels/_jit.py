"""Triton kernels whose mode (compiled or interpreted) is chosen when they are launched, not when imported.

`triton.jit` makes a function compiled or interpreted at decoration, from TRITON_INTERPRET at that moment, so a
module that decorates at import freezes the mode of the whole process. `jit` here keeps the plain function and
builds the variant a launch asks for on first use, one per mode: setting TRITON_INTERPRET=1 after
`import dualvae.kernels` runs the kernels on CPU tensors, and `compile_check` gets real JITFunctions whatever the
environment says.
"""
from __future__ import annotations

import contextlib
import operator
import os
import types

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction


# torch.compile traces the ops' Python, and dynamo cannot trace triton's environment read: the answer is taken
# as a constant of the compiled graph (a graph compiled in one mode keeps it).
@torch.compiler.assume_constant_result
def interpreting() -> bool:
    """True when TRITON_INTERPRET asks for the interpreter now (read the way triton reads it)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


class LazyKernel:
    """A kernel (or a device function it calls) that becomes a JITFunction or an InterpretedFunction at use.

    `kernel[grid](...)` launches the variant of the current mode; `variant(interpret)` returns one explicitly.
    Each variant sees a copy of its module's globals in which every LazyKernel it names is replaced by that
    kernel's variant of the same mode: a compiled kernel calls compiled device functions, an interpreted one
    interpreted ones. Triton's own jitted library functions (tl.randn, tl.sum, tl.zeros) were decorated when
    triton was imported, so the kernels call them through `from_triton` wrappers or use builtins instead.
    """

    def __init__(self, fn, foreign: bool = False, **options):
        self.fn = fn
        self.foreign = foreign  # a triton library function: the jitted functions it calls are rebuilt too
        self.options = options  # triton.jit's keyword arguments (do_not_specialize)
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self._variants: dict[bool, object] = {}

    def variant(self, interpret: bool | None = None):
        interpret = interpreting() if interpret is None else bool(interpret)
        built = self._variants.get(interpret)
        if built is None:
            fn = self.fn
            scope = dict(fn.__globals__)
            for name in fn.__code__.co_names:
                dep = scope.get(name)
                if isinstance(dep, LazyKernel):
                    scope[name] = dep.variant(interpret)
                elif isinstance(dep, (JITFunction, InterpretedFunction)) and (
                        self.foreign or (isinstance(dep, InterpretedFunction) and not interpret)):
                    # A triton function of the other mode is rebuilt; a JITFunction stays as it is in an
                    # interpreted kernel when only passed (the interpreter knows tl.standard's combine
                    # functions by identity, as for tl.reduce(x, axis, _sum_combine)).
                    scope[name] = from_triton(dep).variant(interpret)
            if interpret:
                scope["range"] = _interpreter_range
            copy = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
            copy.__kwdefaults__, copy.__annotations__ = fn.__kwdefaults__, dict(fn.__annotations__)
            copy.__doc__, copy.__qualname__, copy.__module__ = fn.__doc__, fn.__qualname__, fn.__module__
            built = InterpretedFunction(copy, **self.options) if interpret else JITFunction(copy, **self.options)
            self._variants[interpret] = built
        return built

    def __getitem__(self, grid):
        return self.variant()[grid]


def _interpreter_range(*bounds):
    """`range` inside interpreted kernels. The interpreter holds a scalar (a runtime argument such as n, or
    tl.minimum of two) as a (1,)-shaped numpy array, and triton 3.6 turns it into a Python int with
    int(array), which numpy 2.4 refuses for arrays that are not 0-d; the bounds are read here instead."""
    return range(*(int(b.handle.data.reshape(-1)[0]) if hasattr(b, "handle") else operator.index(b)
                   for b in bounds))


def jit(fn=None, **options):
    """`triton.jit`, deferred to the first launch (see the module docstring); `jit(do_not_specialize=[...])`
    passes triton.jit's options on."""
    if fn is None:
        return lambda f: LazyKernel(f, **options)
    return LazyKernel(fn, **options)


_FOREIGN: dict[object, LazyKernel] = {}


def from_triton(jitted) -> LazyKernel:
    """A LazyKernel of one of triton's own jitted functions (e.g. tl.randn), with the functions it calls."""
    fn = jitted.fn
    if fn not in _FOREIGN:
        _FOREIGN[fn] = LazyKernel(fn, foreign=True)
    return _FOREIGN[fn]


def on_device_of(t: torch.Tensor):
    """The tensor's CUDA device made current for a launch: Triton launches on the current device, so cuda:1
    tensors with device 0 current would otherwise run on device 0 with pointers into device 1's memory."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# Passed at every launch: fusing a*b+c into one FMA is what triton does by default, and naming the choice keeps
# triton from warning that its default may change (the alternative, setting TRITON_DEFAULT_FP_FUSION, would
# change the environment of the whole process).
LAUNCH_OPTIONS = {"enable_fp_fusion": True}
