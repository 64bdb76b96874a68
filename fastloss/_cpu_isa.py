"""The vector ISA of the C++ CPU kernels: which one a build machine gets (setup.py) and which
CPU flags loading that build needs (:mod:`fastloss._extension`, before it loads ``_C``: a
missing instruction would crash the process with SIGILL).  This module must not import
anything from fastloss: setup.py loads it by path.
"""
import os
import platform

# The CPU flags each ISA's build needs (AVX-512: F/BW/VL/DQ, as ATen's own AVX512 kernels).
ISA_FLAGS = {
    "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "avx2": ("avx2", "fma", "f16c"),
    "default": (),
}


def cpu_flags():
    """This CPU's feature flags (Linux x86 /proc/cpuinfo), or None where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def build_isa():
    """The widest ISA this machine runs: "avx512", "avx2" or "default" (portable code).
    ``FASTLOSS_CPU_AVX512=0`` caps it at AVX2, ``FASTLOSS_CPU_AVX2=0`` at the portable code."""
    if platform.machine().lower() not in ("x86_64", "amd64") or os.environ.get("FASTLOSS_CPU_AVX2", "").strip() == "0":
        return "default"
    flags = cpu_flags() or set()
    if os.environ.get("FASTLOSS_CPU_AVX512", "").strip() != "0" and set(ISA_FLAGS["avx512"]) <= flags:
        return "avx512"
    return "avx2" if set(ISA_FLAGS["avx2"]) <= flags else "default"


def isa_error(isa, flags):
    """Why a _C built for ``isa`` must not be loaded on a CPU with ``flags`` (None: it may)."""
    if flags is None:
        return None
    missing = [flag for flag in ISA_FLAGS.get(isa, ()) if flag not in flags]
    if not missing:
        return None
    return (f"fastloss._C was built for {isa} CPUs and this CPU lacks {', '.join(missing)} (it would crash "
            f"with an illegal instruction): rebuild it on this machine (FASTLOSS_CPU_AVX512=0 builds for AVX2)")
