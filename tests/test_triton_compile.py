"""The compiled (GPU) path of the Triton kernels, checked without a GPU.

Without a CUDA device the other tests run the Triton kernels through the interpreter,
which accepts programs the GPU compiler rejects.  This compiles every kernel, over the
constexpr variants the launchers use, to sm_90 machine code with Triton's bundled ptxas
(tools/triton_compile_check.py), in a subprocess without TRITON_INTERPRET."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "triton_compile_check.py")


def test_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, SCRIPT, "--quick", "--arch", "90"], env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "compiled" in run.stdout
