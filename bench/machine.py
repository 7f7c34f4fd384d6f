"""What a benchmark prints about the machine it ran on: rates differ about 3x between this
project's machines (AVX2 only vs AVX-512 with VNNI), so every figure names its CPU."""

from __future__ import annotations

import subprocess


def cpu_info() -> str:
    """``lscpu``'s model name and the AVX / FMA flags (``avx512_vnni`` or ``avx_vnni`` is
    what makes ONNX Runtime's int8 kernels fast)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = sorted(f for f in fields.get("Flags", "").split() if f.startswith(("avx", "fma")))
    return (f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} "
            f"CPU(s); {' '.join(flags) or 'no AVX'}")
