"""Backend selection (fastloss/_backend.py), the compiled extension's loading
(fastloss/_extension.py), fastloss.info() and ``python -m fastloss``."""
import importlib
import os
import subprocess
import sys
import warnings

import pytest
import torch

import fastloss
from fastloss import _backend, _extension

import helpers

OP = "sigmoid_focal_loss"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_env_backend(monkeypatch):
    monkeypatch.delenv("FASTLOSS_BACKEND", raising=False)


def _spy_on(monkeypatch, op):
    """Records (backend, "forward" | "backward") for each of op's implementations that runs."""
    calls = []
    impls = _backend._IMPLEMENTATIONS[op]
    for name, (fwd, bwd) in list(impls.items()):
        def wrap(fn, tag):
            def wrapped(*args, **kwargs):
                calls.append(tag)
                return fn(*args, **kwargs)
            return wrapped
        monkeypatch.setitem(impls, name, (wrap(fwd, (name, "forward")), wrap(bwd, (name, "backward"))))
    return calls


@pytest.fixture
def spy(monkeypatch):
    """Records which backend's forward/backward actually ran."""
    if "triton" in fastloss.available_backends("cpu"):
        importlib.import_module("fastloss.triton_kernels.pointwise")  # loads lazily
    return _spy_on(monkeypatch, OP)


def _small():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.randint(0, 4, (4,))
    return x, t


# ---------------------------------------------------------------- the extension


def test_extension_loaded_when_built():
    so = helpers.extension_so_files()
    if so or helpers.env_flag("CI"):
        assert _extension.C is not None, (f"fastloss._C is built ({so}) but not loaded: {_extension.load_error}"
                                          if so else f"CI=true requires fastloss._C: {_extension.load_error}")
        assert _extension.has_cpu()
        assert _extension.load_error is None
    else:
        pytest.skip(f"fastloss._C is not built here (no _C*.so in fastloss/): {_extension.load_error}")


def test_extension_metadata():
    if _extension.C is None:
        helpers.require_backend("cpu", "cpu")  # skips with the load error (fails in CI)
    C = _extension.C
    assert C.ABI_VERSION == _extension.ABI_VERSION
    assert isinstance(C.WITH_CUDA, int) and C.WITH_CUDA in (0, 1)
    assert C.CPU_CAPABILITY in ("avx512", "avx2", "default")
    from fastloss._sources import source_hash

    assert C.SOURCE_HASH == source_hash(os.path.join(ROOT, "csrc"))
    assert hasattr(torch.ops.fastloss, "pointwise_forward_native")
    assert hasattr(torch.ops.fastloss, "pointwise_backward_native")


def test_cpu_isa_guard():
    """A _C whose vector ISA this CPU lacks is refused before loading (SIGILL otherwise)."""
    avx2_cpu = {"sse4_2", "avx", "avx2", "fma", "f16c"}
    error = _extension.isa_error("avx512", avx2_cpu)
    assert "avx512f" in error and "avx512bw" in error and "FASTLOSS_CPU_AVX512=0" in error
    assert _extension.isa_error("avx2", avx2_cpu) is None
    assert _extension.isa_error("default", set()) is None
    assert _extension.isa_error("avx512", None) is None  # flags unknown (not Linux x86): load it
    if _extension.C is not None:  # setup.py wrote the build's ISA next to _C, and this CPU has it
        from fastloss._build_cpu import CPU_ISA

        assert CPU_ISA == _extension.C.CPU_CAPABILITY
        assert _extension.isa_error(CPU_ISA, _extension.cpu_flags()) is None


def test_import_without_extension_falls_back():
    """A missing _C never crashes the import: fastloss warns once and runs on the reference."""
    code = (
        "import sys, warnings\n"
        "sys.modules['fastloss._C'] = None  # makes `from fastloss import _C` raise ImportError\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastloss, torch\n"
        "assert fastloss._extension.C is None\n"
        "assert any('fastloss._C' in str(x.message) for x in w), [str(x.message) for x in w]\n"
        "assert 'cpu' not in fastloss.available_backends('cpu')\n"
        "assert fastloss._backend.resolve('sigmoid_focal_loss', 'cpu') == 'reference'\n"
        "x = torch.randn(5, 3, requires_grad=True)\n"
        "fastloss.sigmoid_focal_loss(x, torch.randint(0, 4, (5,))).backward()\n"
        "assert torch.isfinite(x.grad).all()\n"
        "print('OK')\n"
    )
    env = dict(os.environ)
    env.pop("FASTLOSS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


# ---------------------------------------------------------------- available_backends


def test_available_backends_cpu():
    names = fastloss.available_backends("cpu")
    assert "reference" in names
    assert "cuda" not in names
    assert ("cpu" in names) == (_extension.C is not None)
    triton_expected = _backend.triton_available() and os.environ.get("TRITON_INTERPRET") == "1"
    assert ("triton" in names) == triton_expected
    assert len(set(names)) == len(names)
    assert set(names) <= set(_backend.BACKENDS)
    # accepts devices and device strings alike
    assert fastloss.available_backends(torch.device("cpu")) == names
    assert fastloss.available_backends() == names


def test_available_backends_cuda_listing():
    """Only what can run here: nothing without a visible GPU (unavailable_backends says why);
    with one, what is built / importable."""
    names = fastloss.available_backends("cuda")
    if not torch.cuda.is_available():
        assert names == [] and "no CUDA device" in fastloss.unavailable_backends("cuda")["cuda"]
        return
    assert names[-1] == "reference"
    assert ("cuda" in names) == _extension.has_cuda()
    assert ("triton" in names) == _backend.triton_available()
    assert fastloss.available_backends("cuda:0") == names
    assert "cpu" not in names


def test_cuda_backend_left_out_on_a_gpu_without_kernel_code(monkeypatch):
    """A GPU the build has no code for (a T4 under the default TORCH_CUDA_ARCH_LIST): the cuda
    backend is not offered -- each launch would fail with "no kernel image is available" -- and
    the next backend runs; asked per device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(_extension, "has_cuda", lambda: True)
    monkeypatch.setattr(_extension, "cuda_kernels_run_on", lambda index: index == 1)
    _backend._unavailable.cache_clear()
    try:
        assert "cuda" not in fastloss.available_backends("cuda")
        why = fastloss.unavailable_backends("cuda:0")["cuda"]
        assert "compute capability 7.5" in why and 'TORCH_CUDA_ARCH_LIST="7.5"' in why
        assert _backend.resolve(OP, "cuda") == ("triton" if _backend.triton_available() else "reference")
        with pytest.raises(RuntimeError, match="compute capability 7.5"):
            _backend.resolve(OP, "cuda:0", "cuda")
        assert "cuda" in fastloss.available_backends("cuda:1")
        assert _backend.resolve(OP, torch.device("cuda", 1)) == "cuda"
        assert fastloss.available_backends("cuda:2") == []  # no such device
        assert "no CUDA device 2" in fastloss.unavailable_backends("cuda:2")["reference"]
    finally:
        _backend._unavailable.cache_clear()  # before the patches are undone: nothing cached from them


def _arch_list_covers(archs, major, minor):
    """Whether a TORCH_CUDA_ARCH_LIST holds code for compute capability major.minor: machine
    code for major.m with m <= minor, or PTX ("+PTX") for any earlier capability."""
    for entry in archs.replace(" ", ";").split(";"):
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        a_major, a_minor = (int(v) for v in entry.removesuffix("+PTX").rstrip("af").split("."))
        if (a_major, a_minor) <= (major, minor) and (ptx or a_major == major):
            return True
    return False


def test_cuda_kernel_probe():
    """_C.cuda_kernel_code_status (csrc/cuda/device.cu) agrees with the architectures the build
    was made for (C.CUDA_ARCHS) on this GPU; without a usable device it reports the error
    (status -1) instead of raising, and leaves no CUDA error for torch to trip on."""
    if not _extension.has_cuda():
        pytest.skip("fastloss._C was built without its CUDA kernels: nothing to probe")
    assert _arch_list_covers("8.0;9.0+PTX", 9, 0) and _arch_list_covers("8.0;9.0+PTX", 10, 0) and _arch_list_covers("8.0", 8, 9)
    assert not _arch_list_covers("8.0;9.0+PTX", 7, 5) and not _arch_list_covers("8.0;9.0", 10, 0)
    if torch.cuda.is_available():
        cc = torch.cuda.get_device_capability()
        expected = _arch_list_covers(_extension.C.CUDA_ARCHS, *cc)
        assert _extension.C.cuda_kernel_code_status() == ((1, "") if expected else (0, "")), (_extension.C.CUDA_ARCHS, cc)
        assert _extension.cuda_kernels_run_on(torch.cuda.current_device()) is expected
        torch.ones(1, device="cuda").sum().item()  # torch's next call sees no leftover error
    else:
        status, error = _extension.C.cuda_kernel_code_status()
        assert status == -1 and error


def test_conftest_sets_triton_interpreter_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: Triton runs natively, the interpreter is not forced")
    assert os.environ.get("TRITON_INTERPRET") == "1"
    assert "triton" in fastloss.available_backends("cpu")


@helpers.gpu
def test_gpu_backends_required():
    """On GPU machines (FASTLOSS_REQUIRE_GPU=1) the CUDA and Triton backends must be there."""
    names = fastloss.available_backends("cuda")
    assert "reference" in names
    if helpers.env_flag("FASTLOSS_REQUIRE_GPU"):
        assert "cuda" in names, f"CUDA backend missing (is _C built with CUDA?): {_extension.load_error}"
        assert "triton" in names, "Triton backend missing"
        assert _backend.resolve(OP, "cuda") == "cuda"
    else:
        assert _backend.resolve(OP, "cuda") == names[0]


def test_triton_kernels_live_under_fastloss():
    if not _backend.triton_available():
        pytest.skip("triton is not importable")
    mod = importlib.import_module("fastloss.triton_kernels.pointwise")

    assert mod.__name__ == "fastloss.triton_kernels.pointwise"
    assert "triton" in _backend._IMPLEMENTATIONS[OP]


# ---------------------------------------------------------------- choosing


def test_default_is_fastest_available():
    expected = next(b for b in _backend.preference(OP)["cpu"] if b in fastloss.available_backends("cpu"))
    assert _backend.resolve(OP, "cpu") == expected
    if _extension.C is not None:
        assert expected == "cpu"


def _expected_calls(name, mode):
    """With the gradient stored by the forward, the backward only scales it: no kernel call."""
    return [(name, "forward")] + ([(name, "backward")] if mode == "recompute" else [])


def test_default_backend_is_used(spy, grad_mode):
    x, t = _small()
    fastloss.sigmoid_focal_loss(x, t).backward()
    expected = _backend.resolve(OP, "cpu")
    assert spy == _expected_calls(expected, grad_mode)


def test_store_grad_default_per_device():
    assert _backend.store_grad_in_forward("cpu") is True  # CPUs: compute-bound
    assert _backend.store_grad_in_forward("cuda") is False  # GPUs: bandwidth-bound
    assert _backend.store_grad_in_forward(torch.device("cuda", 0)) is False


@pytest.mark.parametrize("name", helpers.CPU_BACKENDS)
def test_use_backend_selects(spy, grad_mode, name):
    helpers.require_backend("cpu", name)
    x, t = _small()
    with fastloss.use_backend(name):
        assert _backend.resolve(OP, "cpu") == name
        loss = fastloss.sigmoid_focal_loss(x, t)
        loss.backward()
    assert spy == _expected_calls(name, grad_mode)
    assert torch.isfinite(x.grad).all()


def test_use_backend_nesting_and_restore():
    default = _backend.resolve(OP, "cpu")
    with fastloss.use_backend("reference"):
        assert _backend.resolve(OP, "cpu") == "reference"
        if "cpu" in fastloss.available_backends("cpu"):
            with fastloss.use_backend("cpu"):
                assert _backend.resolve(OP, "cpu") == "cpu"
                with fastloss.use_backend("reference"):
                    assert _backend.resolve(OP, "cpu") == "reference"
                assert _backend.resolve(OP, "cpu") == "cpu"
        with fastloss.use_backend(None):  # None: back to the default inside the block
            assert _backend.resolve(OP, "cpu") == default
        assert _backend.resolve(OP, "cpu") == "reference"
    assert _backend.resolve(OP, "cpu") == default


def test_use_backend_restores_after_exception():
    default = _backend.resolve(OP, "cpu")
    with pytest.raises(KeyError):
        with fastloss.use_backend("reference"):
            raise KeyError("boom")
    assert _backend.resolve(OP, "cpu") == default


def test_env_variable(monkeypatch, spy, grad_mode):
    monkeypatch.setenv("FASTLOSS_BACKEND", "reference")
    assert _backend.resolve(OP, "cpu") == "reference"
    x, t = _small()
    fastloss.sigmoid_focal_loss(x, t).backward()
    assert spy == _expected_calls("reference", grad_mode)


def test_precedence_call_over_context_over_env(monkeypatch, spy, grad_mode):
    helpers.require_backend("cpu", "cpu")
    monkeypatch.setenv("FASTLOSS_BACKEND", "reference")
    with fastloss.use_backend("cpu"):
        assert _backend.resolve(OP, "cpu") == "cpu"  # context beats env
        assert _backend.resolve(OP, "cpu", "reference") == "reference"  # call beats context
        x, t = _small()
        fastloss.sigmoid_focal_loss(x, t, backend="reference").backward()
    assert spy == _expected_calls("reference", grad_mode)
    spy.clear()
    with fastloss.use_backend("reference"):
        fastloss.sigmoid_focal_loss(x, t, backend="cpu")
    assert spy == [("cpu", "forward")]


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown fastloss backend"):
        with fastloss.use_backend("tpu"):
            pass
    x, t = _small()
    with pytest.raises(ValueError, match="unknown fastloss backend 'tpu'"):
        fastloss.sigmoid_focal_loss(x, t, backend="tpu")


def test_unknown_backend_in_env(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "nope")
    x, t = _small()
    with pytest.raises(ValueError, match="nope"):
        fastloss.sigmoid_focal_loss(x, t)


def test_unavailable_backend_lists_available():
    x, t = _small()
    available = fastloss.available_backends("cpu")
    with pytest.raises(RuntimeError, match="not available") as info:
        fastloss.sigmoid_focal_loss(x, t, backend="cuda")
    assert str(available) in str(info.value)
    with pytest.raises(RuntimeError, match="'cuda' is not available"):
        with fastloss.use_backend("cuda"):
            fastloss.sigmoid_focal_loss(x, t)


def test_unavailable_env_backend(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "cuda")
    x, t = _small()
    with pytest.raises(RuntimeError, match="available here"):
        fastloss.sigmoid_focal_loss(x, t)


# ---------------------------------------------------------------- info


def test_info_text(capsys):
    text = fastloss.info()
    printed = capsys.readouterr().out
    assert text.strip() == printed.strip()
    assert "torch" in text and torch.__version__ in text
    assert "_C" in text
    assert ("built" in text) if _extension.C is not None else ("not loaded" in text)
    assert "available backends" in text
    assert f"{OP}: {_backend.resolve(OP, 'cpu')}" in text


def test_python_m_fastloss():
    env = dict(os.environ)
    env.pop("FASTLOSS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "fastloss"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch" in proc.stdout and "_C" in proc.stdout
    assert "[cpu] available backends" in proc.stdout


def test_warn_once():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _extension.warn_once("test-key-fastloss", "first")
        _extension.warn_once("test-key-fastloss", "second")
    messages = [str(x.message) for x in w if issubclass(x.category, _extension.FastlossWarning)]
    assert messages == ["first"]


def test_compiled_backward_resolves_its_backend_when_it_runs(monkeypatch, dynamo_reset):
    """A graph traced inside ``use_backend("reference")`` carries the request (None), not the
    backend resolved while tracing: run later outside the block, forward and backward both run
    the default; inside a block, both run the block's.  (The box matrix's backward always calls
    its backend: nothing is stored in the forward.)"""
    from fastloss.ops import box_iou as box_ops

    calls = _spy_on(monkeypatch, box_ops.MATRIX_OP)
    a = torch.tensor([[0.0, 0.0, 4.0, 5.0], [1.0, 2.0, 3.0, 6.0]], requires_grad=True)
    b = torch.tensor([[1.0, 1.0, 5.0, 4.0]])
    f = torch.compile(lambda a, b: fastloss.box_iou(a, b, "giou").sum(), fullgraph=True, backend="aot_eager")
    with fastloss.use_backend("reference"):
        f(a, b).backward()
    assert calls == [("reference", "forward"), ("reference", "backward")]
    calls.clear()
    f(a, b).backward()
    default = _backend.resolve(box_ops.MATRIX_OP, "cpu")
    assert calls == [(default, "forward"), (default, "backward")]
