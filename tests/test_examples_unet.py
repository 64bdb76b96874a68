"""examples/train_unet.py: a MONAI U-Net trained with MONAI's DiceCELoss + smp's DiceLoss,
patched vs unpatched from the same initial state (float64, 1e-9 relative; the script's own
check), run in-process at a small size."""
import pytest

import helpers

pytest.importorskip("monai")
pytest.importorskip("segmentation_models_pytorch")


def test_train_unet_patched_equals_unpatched(capsys):
    rc = helpers.load_example("train_unet").main(["--steps", "3", "--size", "16", "--batch", "2", "--channels", "4", "--bench-reps", "1", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "trajectories agree" in out and "tolerance 1e-09" in out, out
    assert "loss step in isolation" in out and "loss both, float64 on cpu" in out, out
    assert "losses checked: unpatched run on the peers' classes, patched run on fastloss.compat (monai, smp)" in out, out
    assert out.count("\n") >= 7, out  # header, 3 steps, two timing lines, the verdict


def test_train_unet_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        helpers.load_example("train_unet").main(["--size", "30"])
    assert "multiple of 4" in capsys.readouterr().err


@pytest.mark.parametrize("which", ["monai", "smp"])
def test_train_unet_check_losses_is_real(which):
    """The example's patch check fires for each library: the peers' classes where fastloss's are
    expected (and the reverse) raise RuntimeError -- not an assert, so python -O keeps it."""
    import fastloss

    module = helpers.load_example("train_unet")
    plain = module.build_criterion(which)
    module.check_losses(plain, patched=False)
    with pytest.raises(RuntimeError, match=f"{which} loss .* did not take effect"):
        module.check_losses(plain, patched=True)
    with fastloss.patch("monai", "smp"):
        patched = module.build_criterion(which)
    module.check_losses(patched, patched=True)
    with pytest.raises(RuntimeError, match="did not undo"):
        module.check_losses(patched, patched=False)
