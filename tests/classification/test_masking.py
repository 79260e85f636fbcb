"""Lung masking, cropping, black-out and area fraction on hand-made arrays."""

import numpy as np
import pytest

from covid_imaging.classification.masking import (
    apply_lung_mask,
    black_out_lungs,
    lung_area_fraction,
    lung_bounding_box,
)


@pytest.fixture
def image_and_mask():
    image = np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) % 251 + 1  # no zeros
    image = image.astype(np.uint8)
    mask = np.zeros((40, 60), dtype=np.uint8)
    mask[10:20, 30:50] = 255
    return image, mask


def test_mask_without_crop_zeroes_outside_and_keeps_inside(image_and_mask):
    image, mask = image_and_mask
    masked = apply_lung_mask(image, mask, crop_to_bbox=False)
    assert masked.shape == image.shape and masked.dtype == image.dtype
    np.testing.assert_array_equal(masked[mask > 0], image[mask > 0])
    assert (masked[mask == 0] == 0).all()


def test_crop_to_bounding_box_with_margin_and_output_size(image_and_mask):
    image, mask = image_and_mask
    assert lung_bounding_box(mask, margin_px=0) == (10, 20, 30, 50)
    assert lung_bounding_box(mask, margin_px=15) == (0, 35, 15, 60)  # clipped at the borders

    tight = apply_lung_mask(image, mask, crop_to_bbox=True, margin_px=0, output_size=None)
    assert tight.shape == image.shape  # resized back to the input size
    assert (tight > 0).all()  # the tight crop holds only lung pixels

    with_margin = apply_lung_mask(image, mask, margin_px=2, output_size=None)
    assert with_margin[0, 0] == 0  # the margin around the lungs is masked out
    assert apply_lung_mask(image, mask, margin_px=2, output_size=24).shape == (24, 24)


def test_crop_at_bbox_size_copies_lung_pixels_exactly():
    image = np.arange(1600, dtype=np.float32).reshape(40, 40)
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 10:30] = 1
    cropped = apply_lung_mask(image, mask, margin_px=0, output_size=20)
    np.testing.assert_array_equal(cropped, image[5:25, 10:30])


def test_mask_of_another_size_and_rgb_images(image_and_mask):
    image, mask = image_and_mask
    rgb = np.stack([image] * 3, axis=-1)
    half_mask = mask[::2, ::2]  # 20 x 30 mask on a 40 x 60 image
    masked = apply_lung_mask(rgb, half_mask, crop_to_bbox=False)
    assert masked.shape == (40, 60, 3)
    np.testing.assert_array_equal(masked[15, 40], rgb[15, 40])
    assert (masked[0, 0] == 0).all()
    assert apply_lung_mask(rgb, mask, output_size=16).shape == (16, 16, 3)


def test_empty_mask_cannot_be_cropped(image_and_mask):
    image, _ = image_and_mask
    with pytest.raises(ValueError, match="empty"):
        apply_lung_mask(image, np.zeros_like(image), crop_to_bbox=True)


def test_black_out_keeps_only_what_is_outside_the_lungs(image_and_mask):
    image, mask = image_and_mask
    outside = black_out_lungs(image, mask)
    assert (outside[mask > 0] == 0).all()
    np.testing.assert_array_equal(outside[mask == 0], image[mask == 0])
    grown = black_out_lungs(image, mask, dilation_px=3)
    assert (grown == 0).sum() > (outside == 0).sum()
    assert grown[8, 40] == 0 and outside[8, 40] == image[8, 40]


def test_lung_area_fraction(image_and_mask):
    _, mask = image_and_mask
    assert lung_area_fraction(mask) == pytest.approx(200 / 2400)
    assert lung_area_fraction(np.zeros((5, 5))) == 0.0
