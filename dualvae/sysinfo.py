"""What machine a measurement ran on, for the benchmark reports."""
from __future__ import annotations

import os
import platform

# The instruction-set extensions that change which code MKL, oneDNN, ATen and our C++ kernels run (and so
# both speed and rounding): a report names them, since "AMD EPYC" alone covers AVX2-only and AVX-512 parts.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512dq", "avx512cd", "avx512bw",
             "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
             "asimd", "sve", "sve2")


def _cpuinfo_field(names: tuple[str, ...]) -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in names:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    return _cpuinfo_field(("model name",)) or platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """The ISA extensions of ISA_FLAGS this CPU reports (/proc/cpuinfo `flags`/`Features`), in that order."""
    flags = set((_cpuinfo_field(("flags", "Features")) or "").split())
    return [f for f in ISA_FLAGS if f in flags]


def isa_level(flags: list[str] | None = None) -> str:
    """A one-word summary of cpu_isa() (or of `flags`, its result): 'avx512' (F+BW+VL+DQ), 'avx2' (AVX2+FMA),
    else the machine name."""
    isa = set(cpu_isa() if flags is None else flags)
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= isa:
        return "avx512"
    if {"avx2", "fma"} <= isa:
        return "avx2"
    return platform.machine() or "unknown"


def cpu_report() -> dict:
    """The CPU fields every benchmark JSON carries: model, ISA level and flags, logical cores."""
    flags = cpu_isa()
    return {"cpu_model": cpu_model(), "cpu_isa_level": isa_level(flags), "cpu_isa": flags,
            "cpu_count": os.cpu_count()}
