"""tf.data pipelines over PNG files written to tmp_path, and the in-memory baseline."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from covid_imaging.segmentation.data import (
    make_in_memory_dataset,
    make_inference_dataset,
    make_segmentation_dataset,
)


def _write_pairs(folder: Path, n: int, height: int = 40, width: int = 48) -> tuple[list, list]:
    """Constant-grey images (value 50 * (i + 1)) with a left-half {0, 255} mask each."""
    image_paths, mask_paths = [], []
    for index in range(n):
        image = np.full((height, width), 50 * (index + 1), np.uint8)
        mask = np.zeros((height, width), np.uint8)
        mask[:, : width // 2] = 255
        image_paths.append(folder / f"image_{index}.png")
        mask_paths.append(folder / f"mask_{index}.png")
        assert cv2.imwrite(str(image_paths[-1]), image)
        assert cv2.imwrite(str(mask_paths[-1]), mask)
    return image_paths, mask_paths


def test_batches_are_shaped_scaled_and_binary(tmp_path: Path) -> None:
    image_paths, mask_paths = _write_pairs(tmp_path, 3)
    dataset = make_segmentation_dataset(
        image_paths,
        mask_paths,
        image_size=32,
        batch_size=2,
        shuffle=False,
        augment_params=None,
        seed=0,
    )
    batches = list(dataset.as_numpy_iterator())
    assert [images.shape for images, _ in batches] == [(2, 32, 32, 1), (1, 32, 32, 1)]
    images = np.concatenate([images for images, _ in batches])
    masks = np.concatenate([masks for _, masks in batches])
    assert images.dtype == np.float32 and masks.dtype == np.float32
    # File order kept; constant images stay constant through the resize.
    np.testing.assert_allclose(images[:, 5, 5, 0], [50 / 255, 100 / 255, 150 / 255], atol=1e-5)
    assert set(np.unique(masks)) == {0.0, 1.0}
    np.testing.assert_array_equal(masks[:, :, :16], 1.0)  # left half is lung
    np.testing.assert_array_equal(masks[:, :, 16:], 0.0)


def test_image_and_mask_stay_aligned(tmp_path: Path) -> None:
    pattern = np.zeros((32, 32), np.uint8)
    pattern[4:20, 10:28] = 255
    cv2.imwrite(str(tmp_path / "image.png"), pattern)
    cv2.imwrite(str(tmp_path / "mask.png"), pattern)
    dataset = make_segmentation_dataset(
        [tmp_path / "image.png"],
        [tmp_path / "mask.png"],
        image_size=32,
        batch_size=1,
        shuffle=False,
        augment_params=None,
        seed=0,
    )
    images, masks = next(dataset.as_numpy_iterator())
    np.testing.assert_allclose(images[0, ..., 0], pattern / 255.0, atol=1e-6)
    np.testing.assert_array_equal(masks[0, ..., 0], pattern / 255.0)


def test_training_pipeline_is_reproducible_and_varies_across_epochs(tmp_path: Path) -> None:
    image_paths, mask_paths = _write_pairs(tmp_path, 4, 32, 32)

    def build(shuffle: bool = True):
        return make_segmentation_dataset(
            image_paths,
            mask_paths,
            image_size=32,
            batch_size=4,
            shuffle=shuffle,
            augment_params={
                "rotation": {"probability": 1.0},
                "gaussian_noise": {"probability": 1.0},
            },
            seed=3,
        )

    def epoch(dataset) -> tuple[np.ndarray, np.ndarray]:
        return next(iter(dataset.as_numpy_iterator()))

    first_run, second_run = build(), build()
    first_images, first_masks = epoch(first_run)
    again_images, again_masks = epoch(second_run)
    np.testing.assert_array_equal(first_images, again_images)
    np.testing.assert_array_equal(first_masks, again_masks)
    assert set(np.unique(first_masks)) <= {0.0, 1.0}
    assert first_images.min() >= 0.0 and first_images.max() <= 1.0
    # Without shuffling, only fresh augmentation seeds can change the next epoch.
    unshuffled = build(shuffle=False)
    first_epoch, _ = epoch(unshuffled)
    second_epoch, _ = epoch(unshuffled)
    assert not np.allclose(first_epoch, second_epoch)


def test_mismatched_lists_are_rejected(tmp_path: Path) -> None:
    image_paths, mask_paths = _write_pairs(tmp_path, 2)
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        make_segmentation_dataset(image_paths, mask_paths[:1], 32, 1, False, None, 0)


def test_inference_dataset_yields_only_images(tmp_path: Path) -> None:
    image_paths, _ = _write_pairs(tmp_path, 3)
    batches = list(make_inference_dataset(image_paths, image_size=16, batch_size=2))
    assert [tuple(batch.shape) for batch in batches] == [(2, 16, 16, 1), (1, 16, 16, 1)]
    assert float(batches[1].numpy().max()) == pytest.approx(150 / 255, abs=1e-5)


def test_in_memory_dataset_scales_8bit_arrays() -> None:
    images = np.full((3, 8, 8), 255, np.uint8)
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[:, :4] = 255
    batches = list(make_in_memory_dataset(images, masks, batch_size=2).as_numpy_iterator())
    assert [batch[0].shape for batch in batches] == [(2, 8, 8, 1), (1, 8, 8, 1)]
    np.testing.assert_array_equal(batches[0][0], 1.0)
    np.testing.assert_array_equal(batches[0][1][:, :4], 1.0)
    np.testing.assert_array_equal(batches[0][1][:, 4:], 0.0)
