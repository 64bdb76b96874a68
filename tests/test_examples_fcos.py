"""examples/train_fcos.py in CI: a few float64 SGD steps of torchvision's FCOS with and
without ``fastloss.patch("torchvision")`` from the same initial state; the example itself
asserts that the loss trajectories agree to 1e-9 (relative) and prints the loss-step times."""
import pytest

import helpers

pytest.importorskip("torchvision", reason="torchvision is not installed (the FCOS example's peer)")


def test_fcos_trajectories_agree_patched_and_unpatched(capsys):
    example = helpers.load_example("train_fcos")
    status = example.main(["--steps", "3", "--size", "64", "--batch", "2", "--classes", "4", "--bench-reps", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "trajectories agree" in out
    assert "loss step (FCOSHead.compute_loss)" in out and "patched" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 3  # one line per step, each with both totals
    assert all(float(r[1]) == pytest.approx(float(r[2]), rel=1e-9) for r in rows)


def test_fcos_patch_is_undone_after_the_example():
    import torchvision.models.detection.fcos as fcos

    example = helpers.load_example("train_fcos")
    before = (fcos.sigmoid_focal_loss, fcos.generalized_box_iou_loss)
    assert example.main(["--steps", "1", "--size", "64", "--batch", "1", "--classes", "3", "--bench-reps", "0", "--device", "cpu"]) == 0
    assert (fcos.sigmoid_focal_loss, fcos.generalized_box_iou_loss) == before
    assert before[0].__module__.startswith("torchvision")


def test_fcos_example_detects_a_patch_that_did_nothing(monkeypatch):
    import fastloss

    example = helpers.load_example("train_fcos")

    class Inert:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(fastloss, "patch", lambda *names: Inert())
    with pytest.raises(RuntimeError, match="did not replace"):
        example.main(["--steps", "1", "--size", "64", "--batch", "1", "--classes", "3", "--bench-reps", "0", "--device", "cpu"])
