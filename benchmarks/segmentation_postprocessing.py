"""Post-processing variants of a trained segmentation model, scored on the validation split,
on the clean images and under the stress test's synthetic opacities.

Each variant is a set of overrides of the model's ``postprocessing`` block (e.g. the
lung-shape repair); every variant is scored as the pipeline scores a model (Dice at
native resolution after post-processing, per mask source) with the paired difference to
the configured post-processing (bootstrap 95 % CI, patients resampled). Validation split
only: this is how the choice is made, never on the test split. Run after the
segmentation pipeline has trained the model, e.g.::

    kedro run --pipelines=segmentation --env=shared_data
    python benchmarks/segmentation_postprocessing.py --model unet [--model-file other.keras]

Prints one line per condition and variant; nothing is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _trained_segmentation import dice_line, load_trained_segmentation

from covid_imaging.segmentation._params import merge_params
from covid_imaging.segmentation.inference import opacity_transform, score_images
from covid_imaging.segmentation.postprocessing import resolve_postprocessing_params

VARIANTS = {
    "shape repair below solidity 0.70": {"shape_repair": {"enabled": True, "min_solidity": 0.70}},
    "shape repair below solidity 0.75": {"shape_repair": {"enabled": True, "min_solidity": 0.75}},
    "shape repair below solidity 0.80": {"shape_repair": {"enabled": True, "min_solidity": 0.80}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--env", default="shared_data")
    parser.add_argument("--model-file", type=Path, help="a .keras file instead of the catalog's latest version")
    parser.add_argument("--variants", type=json.loads, help='JSON {name: overrides} instead of the built-in variants')
    args = parser.parse_args()
    model, images, raw_files, block, preprocessing = load_trained_segmentation(args.model, args.env, args.model_file)
    rows = images[images["split"] == "validation"].reset_index(drop=True)
    groups = rows.set_index("image_id")["group_id"]
    stress = block["stress_test"]
    conditions = {"clean": None} | {
        kind: opacity_transform(kind, float(stress["strength"]), int(stress["seed"])) for kind in stress["kinds"]
    }
    variants = {"configured": {}} | (args.variants or VARIANTS)
    for condition, transform in conditions.items():
        configured = None
        for name, overrides in variants.items():
            postprocessing = merge_params(resolve_postprocessing_params(block["postprocessing"]), overrides,
                                          where="postprocessing")
            table, _ = score_images(model, rows, block["data"], postprocessing, preprocessing, raw_files,
                                    transform=transform)
            line, dice = dice_line(f"{condition} | {name}", table, configured, groups)
            configured = dice if configured is None else configured
            print(line, flush=True)
    print(f"validation split: {len(rows)} images of {rows['group_id'].nunique()} patients (the unit the CIs resample)")


if __name__ == "__main__":
    main()
