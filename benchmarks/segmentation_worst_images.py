"""The worst-segmented images of any split, drawn as the pipeline's
``worst_predictions.png`` draws the test split's (image, true mask, probability map,
post-processed mask; titled with the Dice at native size).

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

from _trained_segmentation import load_trained_segmentation

from covid_imaging.pipelines.segmentation.nodes import worst_predictions
from covid_imaging.segmentation.inference import score_images


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
    for record in table.nsmallest(args.n, "dice_native_post").itertuples(index=False):
        print(f"{record.image_id} ({record.source}): Dice {record.dice_native_post:.3f}, "
              f"area x{record.area_ratio_native_post:.2f}")
    figure = worst_predictions(model, rows, table, block["data"], block["postprocessing"], args.n, args.split)
    figure.savefig(args.out, dpi=120)
    print(f"{args.out}: the {args.n} worst of the {len(rows)} {args.split} images")


if __name__ == "__main__":
    main()
