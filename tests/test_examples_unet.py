"""examples/train_unet.py: a MONAI U-Net trained with MONAI's DiceCELoss + smp's DiceLoss,
patched vs unpatched from the same initial state (float64, 1e-9 relative; the script's own
check), run in-process at a small size."""
import importlib.util
import pathlib

import pytest

pytest.importorskip("monai")
pytest.importorskip("segmentation_models_pytorch")

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_unet.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_unet_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_unet_patched_equals_unpatched(capsys):
    rc = _load().main(["--steps", "3", "--size", "16", "--batch", "2", "--channels", "4", "--bench-reps", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "trajectories agree" in out and "tolerance 1e-09" in out, out
    assert "loss step in isolation" in out and "loss both, float64 on cpu" in out, out
    assert out.count("\n") >= 7, out  # header, 3 steps, two timing lines, the verdict


def test_train_unet_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        _load().main(["--size", "30"])
    assert "multiple of 4" in capsys.readouterr().err
