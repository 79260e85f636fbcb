"""Two trained segmentation models on the same images: paired Dice difference per source.

Scores the catalog's latest ``segmentation.<model>.model`` (or the ``.keras`` file given
with ``--model-file``) and another saved model (a ``.keras`` file, e.g. an earlier
version under ``data/06_models``) as the pipeline scores
them (Dice at native resolution after post-processing) on one split, and prints per
source the two means, the paired difference with its bootstrap 95 % CI (patients
resampled, ``group_id``: several films of one patient are one unit), how
many images the catalog model draws better, and the two minima. Choose between models on
``--split validation``; ``test`` is for reporting a choice already made. E.g.::

    python benchmarks/segmentation_paired.py \\
        data/06_models/shared_data/segmentation/unet.keras/<version>/unet.keras --split validation

Nothing is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _trained_segmentation import load_trained_segmentation, paired_interval

from covid_imaging.inference.models import load_keras_file
from covid_imaging.segmentation.inference import score_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", type=Path, help="the saved model to compare with (.keras)")
    parser.add_argument("--model", default="unet")
    parser.add_argument("--model-file", type=Path, help="score this .keras file instead of the catalog's latest")
    parser.add_argument("--env", default="shared_data")
    parser.add_argument("--split", default="validation", choices=("validation", "test"))
    args = parser.parse_args()
    current, images, raw_files, block, preprocessing = load_trained_segmentation(args.model, args.env, args.model_file)
    other = load_keras_file(str(args.other))
    rows = images[images["split"] == args.split].reset_index(drop=True)
    tables = [score_images(model, rows, block["data"], block["postprocessing"], preprocessing, raw_files)[0]
              .set_index("image_id") for model in (other, current)]
    patients = rows.set_index("image_id")["group_id"]
    print(f"{args.split} split; other: {args.other} ({other.count_params():,} parameters); "
          f"{args.model_file or 'catalog model'}: {current.count_params():,} parameters")
    for source in [None, *sorted(rows["source"].unique())]:
        ids = tables[0].index if source is None else tables[0].index[tables[0]["source"] == source]
        before, after = (table.loc[ids, "dice_native_post"] for table in tables)
        difference = (after - before).to_numpy()
        low, high = paired_interval(difference, patients.loc[ids].to_numpy())
        print(f"{source or 'all'} ({len(ids)} images, {patients.loc[ids].nunique()} patients): other {before.mean():.4f}, model {after.mean():.4f}; "
              f"difference {difference.mean():+.4f} [{low:+.4f}, {high:+.4f}], model better on "
              f"{int((difference > 0).sum())}; minimum {before.min():.3f} -> {after.min():.3f}")


if __name__ == "__main__":
    main()
