"""examples/yolo_loss.py: ultralytics' YOLOv8 detection loss patched vs unpatched (float64,
1e-9 relative; the script's own check), run in-process on a small batch."""
import importlib.util
import pathlib

import pytest

pytest.importorskip("ultralytics")

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "yolo_loss.py"


def _load():
    spec = importlib.util.spec_from_file_location("yolo_loss_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_yolo_loss_patched_equals_unpatched(capsys):
    rc = _load().main(["--batch", "2", "--imgsz", "128", "--targets", "3", "--steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OK: patched and unpatched agree to 1e-9 relative in float64" in out
    for name in ("box_loss", "cls_loss", "dfl_loss", "d loss / d boxes", "d loss / d scores", "loss step (whole criterion)", "its BboxLoss"):
        assert name in out, out


def test_yolo_loss_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        _load().parse_args(["--imgsz", "100"])
    assert "multiple of 32" in capsys.readouterr().err
