"""Which number format the model computes in: ``auto`` picks what the hardware is built for.

* CUDA: fp16 (the format CLIP and X-CLIP were trained in; tensor cores on every CUDA GPU we run on).
* A CPU with bf16 units, AMX (Intel Sapphire Rapids and later) or AVX512-BF16 (AMD Zen 4 and later,
  Intel Cooper Lake): bf16. Measured on a 2-vCPU Zen 4 (AVX512-BF16, no AMX): the B/32 encoder 2.4x
  faster than fp32; on a Sapphire Rapids with AMX 4.2x; video-embedding cosine to fp32 >= 0.9999.
* Any other CPU: fp32 (bf16 would be emulated there, several times slower than fp32).

``fp32`` is always available and exact. Leaving the precision out (None) means ``$XCLIP_PRECISION``, else
``auto``. Importing this module does not import torch.
"""

from __future__ import annotations

import functools
import os

from .errors import UsageError

#: What --precision takes.
CHOICES = ("auto", "fp32", "bf16", "fp16")
#: The formats a model can be in.
FORMATS = ("fp32", "bf16", "fp16")


def check_precision(precision: str | None) -> str:
    """`precision` if it is one of :data:`CHOICES`; None means ``$XCLIP_PRECISION``, else ``auto``.
    UsageError otherwise."""
    if precision is None:
        precision = os.environ.get("XCLIP_PRECISION", "").strip() or "auto"
        if precision not in CHOICES:
            raise UsageError(f"XCLIP_PRECISION={precision!r}: expected one of {', '.join(CHOICES)}")
    if precision not in CHOICES:
        raise UsageError(f"unknown precision {precision!r}; expected one of {', '.join(CHOICES)}")
    return precision


def resolve_precision(precision: str | None, device_type: str) -> str:
    """The format to compute in on a device of `device_type` (``cpu``, ``cuda``, ``mps``): `precision`
    itself unless it is ``auto`` (or None)."""
    precision = check_precision(precision)
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "fp16"
    if device_type == "cpu" and cpu_bf16_units():
        return "bf16"
    return "fp32"


@functools.cache
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags that matter for the choice: ``amx_bf16``, ``avx512_bf16``, ``avx512f``,
    ``avx2``, ``fma`` (from torch's own probes, and /proc/cpuinfo where there is one)."""
    found: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    found.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    import torch

    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        if fn is not None and fn():
            found.add(flag)
    return frozenset(found & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma"})


def cpu_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16) rather than emulating it."""
    return bool(cpu_features() & {"amx_bf16", "amx_tile", "avx512_bf16"})


def cpu_description() -> str:
    """The CPU's model name and the flags above, for benchmark tables and ``xclip --version``-like output."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if not name:
        import platform

        name = platform.processor() or platform.machine()
    flags = " ".join(sorted(cpu_features())) or "none of amx/avx512/avx2"
    return f"{name} ({flags})"
