"""Test-time augmentation of a trained segmentation model, scored on the validation split.

Averages the model's probability maps over copies of each image (shifted by a few
pixels, mirrored left-right, zoomed about the centre, or with another gamma) after
undoing the geometric transform on each map, and scores the
result as the pipeline does: Dice at native resolution after post-processing, per mask
source, with the paired difference to the plain model (bootstrap 95 % CI, patients resampled).
Validation split only: this is how the choice is made, never on the test split. Run
after the segmentation pipeline has trained the model, e.g.::

    kedro run --pipelines=segmentation --env=shared_data
    python benchmarks/segmentation_tta.py --model unet [--model-file other.keras]

Prints one line per variant; nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from _trained_segmentation import dice_line, load_trained_segmentation

from covid_imaging.segmentation.inference import score_images

# Each variant: the transforms whose maps are averaged: "id", "mirror", a (dx, dy) shift
# in px, ("scale", s) (zoom about the centre; s < 1 shows more around the image), or
# ("gamma", g) (intensity x ** g; the map needs no undoing).
VARIANTS = {
    "scales 0.9, 1.1": ["id", ("scale", 0.9), ("scale", 1.1)],
    "scales 0.85, 0.93, 1.07, 1.15": ["id", ("scale", 0.85), ("scale", 0.93), ("scale", 1.07), ("scale", 1.15)],
    "gamma 0.8, 1.25": ["id", ("gamma", 0.8), ("gamma", 1.25)],
    "scales 0.9, 1.1 and gamma 0.8, 1.25": ["id", ("scale", 0.9), ("scale", 1.1), ("gamma", 0.8), ("gamma", 1.25)],
    "shifts 4 px (up, down, left, right)": ["id", (4, 0), (-4, 0), (0, 4), (0, -4)],
    "shifts 4 px (diagonal)": ["id", (4, 4), (-4, -4), (4, -4), (-4, 4)],
    "shifts 2 px (up, down, left, right)": ["id", (2, 0), (-2, 0), (0, 2), (0, -2)],
    "mirror left-right": ["id", "mirror"],
}


def shifted(batch: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``batch`` (B, H, W, C) moved by ``dx``, ``dy`` px; what comes in from outside is 0 (black)."""
    out = np.zeros_like(batch)
    height, width = batch.shape[1:3]
    src_y, dst_y = (slice(0, height - dy), slice(dy, height)) if dy >= 0 else (slice(-dy, height), slice(0, height + dy))
    src_x, dst_x = (slice(0, width - dx), slice(dx, width)) if dx >= 0 else (slice(-dx, width), slice(0, width + dx))
    out[:, dst_y, dst_x] = batch[:, src_y, src_x]
    return out


def zoomed(batch: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` (B, H, W, C) zoomed by ``scale`` about the centre (black outside the
    original), and the coverage (1 where the result shows the original image)."""
    height, width = batch.shape[1:3]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), 0.0, scale)
    out = np.stack([cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0.0).reshape(image.shape)
                    for image in batch.astype(np.float32)])
    coverage = cv2.warpAffine(np.ones((height, width), np.float32), matrix, (width, height), flags=cv2.INTER_NEAREST)
    return out, coverage


class Averaged:
    """Stands in for the Keras model in ``score_images``: the mean map over ``transforms``."""

    def __init__(self, model, transforms) -> None:
        self.model, self.transforms = model, transforms
        self.input_shape, self.output_shape, self.layers = model.input_shape, model.output_shape, model.layers
        self.name = f"{model.name}_tta"

    def predict_on_batch(self, batch) -> np.ndarray:
        batch = np.asarray(batch)
        maps = []
        for transform in self.transforms:
            if transform == "id":
                maps.append(np.asarray(self.model.predict_on_batch(batch)))
            elif transform == "mirror":
                maps.append(np.asarray(self.model.predict_on_batch(batch[:, :, ::-1]))[:, :, ::-1])
            elif transform[0] == "gamma":
                maps.append(np.asarray(self.model.predict_on_batch(np.clip(batch, 0.0, 1.0) ** transform[1])))
            elif transform[0] == "scale":
                zoomed_batch, _ = zoomed(batch, transform[1])
                # back to the image's frame; where the zoomed copy showed no image (zooming
                # in crops the border) that copy has no say
                back, coverage = zoomed(np.asarray(self.model.predict_on_batch(zoomed_batch)), 1.0 / transform[1])
                maps.append(np.where(coverage[None, :, :, None] > 0, back, np.nan))
            else:
                dx, dy = transform
                maps.append(shifted(np.asarray(self.model.predict_on_batch(shifted(batch, dx, dy))), -dx, -dy))
        return np.nanmean(maps, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--env", default="shared_data")
    parser.add_argument("--model-file", type=Path, help="a .keras file instead of the catalog's latest version")
    args = parser.parse_args()
    model, images, raw_files, block, preprocessing = load_trained_segmentation(args.model, args.env, args.model_file)
    rows = images[images["split"] == "validation"].reset_index(drop=True)
    plain = None
    for name, transforms in {"plain model": ["id"], **VARIANTS}.items():
        table, _ = score_images(Averaged(model, transforms), rows, block["data"], block["postprocessing"],
                                preprocessing, raw_files)
        line, dice = dice_line(name, table, plain, rows.set_index("image_id")["group_id"])
        plain = dice if plain is None else plain
        print(line, flush=True)
    print(f"validation split: {len(rows)} images of {rows['group_id'].nunique()} patients (the unit the CIs resample)")


if __name__ == "__main__":
    main()
