"""examples/yolo_loss.py: ultralytics' YOLOv8 detection loss patched vs unpatched (float64,
1e-9 relative; the script's own check), run in-process on a small batch."""
import pytest

import helpers

pytest.importorskip("ultralytics")


def test_yolo_loss_patched_equals_unpatched(capsys):
    rc = helpers.load_example("yolo_loss").main(["--batch", "2", "--imgsz", "128", "--targets", "3", "--steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "OK: patched and unpatched agree to 1e-9 relative in float64" in out
    for name in ("box_loss", "cls_loss", "dfl_loss", "d loss / d boxes", "d loss / d scores", "loss step (whole criterion)", "its BboxLoss"):
        assert name in out, out


def test_yolo_loss_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        helpers.load_example("yolo_loss").parse_args(["--imgsz", "100"])
    assert "multiple of 32" in capsys.readouterr().err
