"""One output head per lung-mask convention: targets, losses, saving, and which head answers."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from covid_imaging.imaging.io import encode_png
from covid_imaging.segmentation.conventions import (
    IGNORED,
    UNSPECIFIED,
    MaskConventionHeads,
    head_index,
    model_conventions,
    select_heads,
    training_heads,
)
from covid_imaging.segmentation.data import make_segmentation_dataset
from covid_imaging.segmentation.inference import score_images
from covid_imaging.segmentation.losses import bce_dice_loss, dice_coefficient
from covid_imaging.segmentation.models import build_ensemble, build_unet


def test_heads_are_the_trained_conventions_in_the_preferred_order():
    assert training_heads(["nlm", "v7", "nlm"], ["v7", "nlm"]) == ("v7", "nlm")
    # a convention with no training image gets no head (it would answer untrained)
    assert training_heads(["nlm", "nlm"], ["v7", "nlm"]) == ("nlm",)
    # conventions outside the preferred order follow it, alphabetically
    assert training_heads(["x", "nlm", "a"], ["v7", "nlm"]) == ("nlm", "a", "x")


def test_an_unknown_convention_is_answered_by_the_default_head():
    assert head_index(("v7", "nlm"), "nlm") == 1
    assert head_index(("v7", "nlm"), "v7") == 0
    assert head_index(("v7", "nlm"), UNSPECIFIED) == 0
    assert head_index(("v7", "nlm"), None) == 0


def test_each_image_is_read_at_its_own_head():
    output = np.stack([np.full((2, 4, 4), value) for value in (0.1, 0.9)], axis=-1)  # head 0: 0.1, head 1: 0.9
    chosen = select_heads(output, [1, 0])
    assert chosen.shape == (2, 4, 4)
    assert np.allclose(chosen[0], 0.9) and np.allclose(chosen[1], 0.1)


def _write_pair(folder, name: str, mask: np.ndarray) -> tuple[str, str]:
    image_path, mask_path = folder / f"{name}_image.png", folder / f"{name}_mask.png"
    image_path.write_bytes(encode_png(mask // 2))
    mask_path.write_bytes(encode_png(mask))
    return str(image_path), str(mask_path)


def test_a_target_holds_the_mask_in_its_own_head_and_ignored_elsewhere(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 4:14] = 255
    pairs = [_write_pair(tmp_path, name, mask) for name in ("a", "b")]
    # geometry only, always: the moved mask must still match the moved image
    geometry = {op: {"probability": 0.0} for op in ("gamma", "gaussian_blur", "gaussian_noise", "salt_and_pepper")}
    geometry |= {"rotation": {"probability": 1.0, "range": [20.0, 20.0]}}
    dataset = make_segmentation_dataset(
        [p[0] for p in pairs], [p[1] for p in pairs], 32, 2, shuffle=False, augment_params=geometry, seed=3,
        heads=[1, 0], n_heads=2,
    )
    images, targets = next(iter(dataset))
    assert images.shape == (2, 32, 32, 1) and targets.shape == (2, 32, 32, 2)
    targets = targets.numpy()
    assert np.all(targets[0, ..., 0] == IGNORED) and set(np.unique(targets[0, ..., 1])) <= {0.0, 1.0}
    assert np.all(targets[1, ..., 1] == IGNORED) and targets[1, ..., 0].sum() > 0
    # augmentation moved image and mask together before the target was split into heads
    moved_lung, moved_image = targets[0, ..., 1] > 0.5, images.numpy()[0, ..., 0] > 0.25
    assert not np.array_equal(moved_lung, mask[..., :] > 127)  # it was rotated ...
    assert np.mean(moved_lung == moved_image) > 0.97  # ... together with its image


def test_the_losses_score_each_image_on_its_own_head_only():
    truth = np.zeros((2, 8, 8, 1), np.float32)
    truth[:, 2:6, 2:6] = 1.0
    targets = np.concatenate([truth, np.full_like(truth, IGNORED)], axis=-1)  # both images train head 0
    perfect_head0 = np.concatenate([truth, 1.0 - truth], axis=-1)  # head 1 is wrong everywhere
    assert np.allclose(dice_coefficient(targets, perfect_head0), dice_coefficient(truth, truth))
    swapped = np.concatenate([np.full_like(truth, IGNORED), truth], axis=-1)  # now head 1 is theirs
    assert np.all(np.asarray(bce_dice_loss(swapped, perfect_head0)) > np.asarray(bce_dice_loss(targets, perfect_head0)) + 1.0)
    # one head: exactly the plain loss
    assert np.allclose(bce_dice_loss(truth, truth * 0.9), bce_dice_loss(truth, truth * 0.9))


def test_heads_survive_saving_and_the_ensemble_keeps_them(tmp_path):
    model = build_unet(input_size=32, base_filters=2, mask_conventions=("v7", "nlm"))
    assert model.output_shape == (None, 32, 32, 2)
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert model_conventions(loaded) == ("v7", "nlm")
    ensemble = build_ensemble([loaded, build_unet(input_size=32, base_filters=2, mask_conventions=("v7", "nlm"))])
    assert model_conventions(ensemble) == ("v7", "nlm") and ensemble.output_shape[-1] == 2
    with pytest.raises(ValueError, match="same mask convention heads"):
        build_ensemble([model, build_unet(input_size=32, base_filters=2)])
    # a one-channel model of before heads existed: one head for every convention
    plain = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Identity()])
    assert model_conventions(plain) == (UNSPECIFIED,)


def test_scoring_reads_the_head_of_each_rows_convention(tmp_path):
    """A two-head "model" whose heads draw different lungs: each row is scored on its own."""
    mask = np.zeros((32, 32), np.uint8)
    mask[4:28, 4:28] = 255
    image_path, mask_path = _write_pair(tmp_path, "case", mask)
    image = keras.Input((32, 32, 1))
    # head "v7" predicts the image's lung (> 0.25 after the /2 in _write_pair), head "nlm" predicts nothing
    lung = keras.layers.Lambda(lambda x: tf.cast(x > 0.25, "float32"))(image)
    heads = MaskConventionHeads(("v7", "nlm"))(keras.layers.Concatenate()([lung, lung * 0.0]))
    model = keras.Model(image, heads)
    rows = pd.DataFrame(
        [{"image_id": f"case_{convention}", "source": "s", "mask_convention": convention,
          "image_path": image_path, "mask_path": mask_path} for convention in ("v7", "nlm", UNSPECIFIED)]
    )
    scores, _ = score_images(model, rows, {"batch_size": 3}, {"local_threshold": {"enabled": False}})
    dice = dict(zip(scores["image_id"], scores["dice_raw"], strict=True))
    assert dice["case_v7"] > 0.99 and dice[f"case_{UNSPECIFIED}"] > 0.99  # unknown: the default head
    assert dice["case_nlm"] < 0.05
