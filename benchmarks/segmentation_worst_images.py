"""The worst-segmented images of a split, drawn: true lung outline in green, the
post-processed prediction in red, each labelled with its Dice at native size.

What a user looks at before trusting the summary figures: whether the lowest scores are
the model's errors or the masks' conventions. Run after the segmentation pipeline has
trained the model, e.g.::

    kedro run --pipelines=segmentation --env=shared_data
    python benchmarks/segmentation_worst_images.py --split validation --n 3 --out worst.png

Prints one line per drawn image and writes one PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from _trained_segmentation import load_trained_segmentation

from covid_imaging.segmentation.inference import score_images

TILE = 384  # px per image in the figure (nearest-neighbour upscaling of the model's input)


def outlined(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, label: str) -> np.ndarray:
    """One tile: ``image`` (model size, [0, 1]) with the outlines of ``truth`` (green) and ``predicted`` (red)."""
    tile = cv2.cvtColor(cv2.resize((image * 255).astype(np.uint8), (TILE, TILE), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_GRAY2BGR)
    for mask, colour in ((truth, (0, 200, 0)), (predicted, (0, 0, 255))):
        big = cv2.resize((mask > 0.5).astype(np.uint8), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tile, contours, -1, colour, 2)
    cv2.rectangle(tile, (0, TILE - 22), (TILE, TILE), (0, 0, 0), -1)
    cv2.putText(tile, label, (4, TILE - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--env", default="shared_data")
    parser.add_argument("--model-file", type=Path, help="a .keras file instead of the catalog's latest version")
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--n", type=int, default=3, help="how many of the worst images")
    parser.add_argument("--out", type=Path, default=Path("worst_segmentations.png"))
    args = parser.parse_args()
    model, images, raw_files, block, preprocessing = load_trained_segmentation(args.model, args.env, args.model_file)
    rows = images[images["split"] == args.split].reset_index(drop=True)
    table, _ = score_images(model, rows, block["data"], block["postprocessing"], preprocessing, raw_files)
    worst = table.nsmallest(args.n, "dice_native_post")
    chosen = rows.set_index("image_id").loc[worst["image_id"]].reset_index()
    # one sample per patient group: give each drawn image its own group so none is skipped
    chosen["group_id"] = chosen["image_id"]
    _, samples = score_images(model, chosen, block["data"], block["postprocessing"], keep_samples=len(chosen))
    tiles = []
    for (image, mask, _probability, postprocessed, _dice, image_id), record in zip(
            samples, worst.itertuples(index=False), strict=True):
        label = f"{record.source} ({args.split}): Dice {record.dice_native_post:.3f}, area x{record.area_ratio_native_post:.2f}"
        print(f"{image_id}: {label}")
        tiles.append(outlined(image, mask, postprocessed, label))
    cv2.imwrite(str(args.out), np.hstack(tiles))
    print(f"{args.out}: {len(tiles)} of the {len(rows)} {args.split} images (green: true mask, red: prediction)")


if __name__ == "__main__":
    main()
