"""Build of fastloss and its compiled extension ``fastloss._C``.

The C++ CPU kernels are always built.  The CUDA kernels are built whenever nvcc is
found (``CUDA_HOME``) and torch is a CUDA build -- a visible GPU is *not* required --
or when ``FASTLOSS_FORCE_CUDA=1``; ``FASTLOSS_SKIP_CUDA=1`` skips them for quick
local builds.  ``TORCH_CUDA_ARCH_LIST`` (default "8.0;9.0+PTX": machine code for
Ampere and Hopper, PTX the driver compiles for newer GPUs; an older GPU gets the Triton kernels)
and ``MAX_JOBS`` are honoured.  The CPU kernels use the widest vector ISA of the build machine: AVX-512
(F/BW/VL/DQ, as ATen's own AVX512 kernels), else AVX2, else portable code;
``FASTLOSS_CPU_AVX512=0`` caps them at AVX2, ``FASTLOSS_CPU_AVX2=0`` builds the portable ones.
The C++ objects carry no debug info unless ``FASTLOSS_DEBUG_INFO=1`` (for a debugger).

Build in place, without fetching a second torch:
    pip install --no-build-isolation -e .
"""
import glob
import importlib.util
import os
import platform
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _load_by_path(name):
    """fastloss/<name>.py without importing fastloss (which imports torch)."""
    spec = importlib.util.spec_from_file_location(f"_fastloss_{name}", os.path.join(ROOT, "fastloss", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def source_hash():
    """Hash of every C++/CUDA source (fastloss/_sources.py)."""
    return _load_by_path("_sources").source_hash(CSRC)


def _nvidia_include_dirs():
    """CUDA headers torch needs beyond the toolkit (cusparse.h, ...) ship in pip wheels."""
    dirs = []
    for entry in sys.path:
        dirs += sorted(glob.glob(os.path.join(entry, "nvidia", "cu*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isfile(os.path.join(d, "cusparse.h"))][:1]


def _default_cuda_home():
    """torch finds CUDA_HOME from `which nvcc`; a wrapper script on PATH (as on our machines:
    /usr/local/bin/nvcc) then yields a wrong root without lib64/.  Prefer the toolkit root."""
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        if os.path.isfile("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


def extensions():
    _default_cuda_home()
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = False
    if not _flag("FASTLOSS_SKIP_CUDA"):
        with_cuda = _flag("FASTLOSS_FORCE_CUDA") or (CUDA_HOME is not None and torch.version.cuda is not None)
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")

    isa = _load_by_path("_cpu_isa").build_isa()  # the same module checks the flags before _C loads
    # -ffp-contract=off: a product is rounded before the sum that uses it, as in PyTorch's own
    # elementwise ops -- the assigners compare IoUs for equality with mmdetection's (an FMA moves
    # the last bit), and the box kernels then equal their reference bit for bit.
    cxx = ["-O3", "-ffp-contract=off"]
    # -g0: Python's CFLAGS carry -g, and the debug info of ATen's vector templates made each CPU
    # object 20-40x larger and its compile ~1.5x as long (csrc/cpu/dice.cpp 58.5 -> 36.0 s,
    # box_iou.cpp 98 -> 67 s, one compile each on a 2-core CI-like machine).  FASTLOSS_DEBUG_INFO=1
    # keeps it (a flag change is no source change: `make build` needs `make clean` first).
    if not _flag("FASTLOSS_DEBUG_INFO"):
        cxx.append("-g0")
    link = []
    if platform.system() == "Linux":
        # at::parallel_for is header code that runs its OpenMP pragma in *our* object files:
        # without -fopenmp the CPU kernels would silently run on one thread.  libgomp.so.1
        # resolves to the copy torch already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    # ATen's Vectorized<T> then uses that ISA's registers (8 or 16 fp32 lanes) and SLEEF's
    # vector exp/log1p; the kernels' own intrinsics follow CPU_CAPABILITY_AVX2 / _AVX512.
    if isa == "avx512":
        cxx += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"]
    elif isa == "avx2":
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    # Build facts go to a generated header included by csrc/fastloss.cpp alone, so a changed
    # hash recompiles one file instead of every kernel (as a -D flag would).
    generated = os.path.join(ROOT, "build", "generated")
    os.makedirs(generated, exist_ok=True)
    info = (f'#define FL_SOURCE_HASH "{source_hash()}"\n#define FL_WITH_CUDA {int(with_cuda)}\n'
            f'#define FL_CPU_CAPABILITY "{isa}"\n'
            f'#define FL_CUDA_ARCHS "{os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""}"\n')
    info_path = os.path.join(generated, "fastloss_build_info.h")
    if not os.path.exists(info_path) or open(info_path).read() != info:
        with open(info_path, "w") as f:
            f.write(info)
    # The ISA again, readable before _C is loaded: fastloss/_extension.py refuses a _C whose
    # instructions this CPU lacks (a crash with SIGILL otherwise) -- e.g. a checkout on a shared
    # file system, built on an AVX-512 node and imported on an AVX2 one.
    isa_py = os.path.join(ROOT, "fastloss", "_build_cpu.py")
    isa_text = f'# Generated by setup.py: the vector ISA of fastloss._C\'s CPU kernels.\nCPU_ISA = "{isa}"\n'
    if not os.path.exists(isa_py) or open(isa_py).read() != isa_text:
        with open(isa_py, "w") as f:
            f.write(isa_text)

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc"), generated]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        ext = CUDAExtension("fastloss._C", sources, include_dirs=include_dirs + _nvidia_include_dirs(),
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    else:
        ext = CppExtension("fastloss._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)
    print(f"fastloss: building _C with CUDA={with_cuda} cpu={isa}", file=sys.stderr)
    return [ext], {"build_ext": _incremental(BuildExtension.with_options(use_ninja=True), isa)}


def _incremental(base, isa):
    """build_ext whose objects (and ninja's state) live in build/temp.<platform>-<python>-<isa>/
    of the checkout: `pip install -e .` otherwise compiles in a fresh temporary folder each
    time, so a rebuild with nothing changed recompiled every source.  Now ninja recompiles only
    what changed (with header dependencies); the link and copy take seconds.  One folder per
    ISA: the builds for the other ISAs (tools/test_cpu_isa.sh) keep their own objects."""

    class IncrementalBuildExt(base):
        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}-{isa}")

    return IncrementalBuildExt


ext_modules, cmdclass = extensions()

setup(
    packages=["fastloss", "fastloss.reference", "fastloss.ops", "fastloss.compat", "fastloss.triton_kernels"],
    package_dir={"fastloss": "fastloss", "fastloss.triton_kernels": "triton_kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
