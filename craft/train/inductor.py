"""Inductor settings for a fast cold start on the CPU.

Before its first CPU kernel, inductor dry-compiles and loads a test program for each vector
instruction set the CPU reports (AVX-512, AVX2, ...): 5-6 s on 2 cores with an empty cache,
and about 1 s in every later process, which loads each test library in a child Python. The
CPU's own flags (`/proc/cpuinfo`) already say which sets it runs; Craft trusts them, as
inductor does in Meta's builds. A compiler that cannot build them fails on the first kernel,
with its error. Setting TORCHINDUCTOR_VEC_ISA_OK yourself (1 trust, 0 no vector code) wins.
"""

from __future__ import annotations

import os

import torch._inductor.config as inductor_config


def trust_cpu_vector_isa() -> None:
    """Skip inductor's vector-ISA dry compiles (unless TORCHINDUCTOR_VEC_ISA_OK is set)."""
    if "TORCHINDUCTOR_VEC_ISA_OK" not in os.environ and inductor_config.cpp.vec_isa_ok is None:
        inductor_config.cpp.vec_isa_ok = True
