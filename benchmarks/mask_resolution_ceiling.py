"""Benchmark: how much Dice the model's input size alone costs at native resolution.

Every true lung mask of the data set is brought to the model's square input (the
preprocessing's aspect-preserving pad, area-averaged so the map is soft like a
probability map), back to the image's own size the way predictions are
(:func:`covid_imaging.imaging.preprocessing.restore_native_size`, bilinear), thresholded
at 0.5 and compared with the original. That Dice is the ceiling a perfect model at that
input size could reach; the gap between it and a trained model's native-size Dice is
the model's own error.

Usage:
    python benchmarks/mask_resolution_ceiling.py [--data ../shared/data] [--sizes 128 160 256] [--per-source 80]

Prints one row per mask source and size: mean and minimum Dice over the masks read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from covid_imaging.imaging.io import binary_mask, decode_gray
from covid_imaging.imaging.preprocessing import resize_image, restore_native_size
from covid_imaging.segmentation.metrics import dice_score


def round_trip_dice(mask: np.ndarray, size: int) -> float:
    """Dice of ``mask`` against itself after the trip to a ``size`` square and back."""
    height, width = mask.shape
    soft = resize_image(mask.astype(np.float32), size, interpolation="area", mode="pad")
    restored = restore_native_size(soft, height, width, "pad") > 0.5
    return dice_score(restored, mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 256])
    parser.add_argument("--per-source", type=int, default=80, help="masks read per source (0: all)")
    args = parser.parse_args()
    if not (args.data / "manifest.csv").exists():
        sys.exit(f"no manifest.csv under {args.data}")
    manifest = pd.read_csv(args.data / "manifest.csv", keep_default_na=False)
    with_masks = manifest[manifest["mask_path"] != ""]
    print("| mask source | masks | " + " | ".join(f"{size} px: mean (min)" for size in args.sizes) + " |")
    print("|---|---|" + "---|" * len(args.sizes))
    for source, rows in with_masks.groupby("source"):
        paths = rows["mask_path"].head(args.per_source) if args.per_source else rows["mask_path"]
        masks = [binary_mask(decode_gray((args.data / path).read_bytes())) for path in paths]
        cells = []
        for size in args.sizes:
            scores = [round_trip_dice(mask, size) for mask in masks]
            cells.append(f"{np.mean(scores):.4f} ({np.min(scores):.4f})")
        print(f"| {source} | {len(masks)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
