"""Validation balanced accuracy of one X-ray classifier over seeds, for parameter variants.

How the CPU defaults of ``conf/base/parameters/classification.yml`` are chosen: on the
validation split, never the test split. Each variant is a JSON object merged over the
model's block of the environment (``data`` keys into ``data``, ``training`` keys into
every training phase); the model is trained with seeds ``data.seed + 0, 1, ...`` by the
pipeline's own training node on the pipeline's own inputs. Run after the
classification pipeline has written its inputs, e.g.::

    kedro run --pipelines=classification --env=shared_data
    python benchmarks/classification_validation.py simple_cnn_pneumonia \\
        '{}' '{"data": {"undersample": false}, "training": {"class_weight": "balanced", "epochs": 20}}'

Prints one line per variant: mean +- std of the validation balanced accuracy, each
seed's value and the validation size. Nothing is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from kedro.config import OmegaConfigLoader
from sklearn.metrics import balanced_accuracy_score

from covid_imaging.pipelines.classification.nodes import (
    _labels,
    _predict,
    _rows,
    train_classification_model,
)
from covid_imaging.settings import CONFIG_LOADER_ARGS


def validation_scores(inputs: pd.DataFrame, block: dict, variant: dict, n_seeds: int) -> tuple[list[float], int]:
    """Each seed's validation balanced accuracy, and the validation size."""
    data = {**block["data"], **variant.get("data", {}), "cross_validation": False}
    training = {phase: {**values, **variant.get("training", {})} for phase, values in block["training"].items()}
    validation = _rows(inputs, data, "validation")
    scores = []
    for offset in range(n_seeds):
        seeded = {**data, "seed": int(data["seed"]) + offset}
        model, _ = train_classification_model(inputs, block["model"], training, seeded)
        predicted = _predict(model, validation, seeded).argmax(axis=1)
        scores.append(float(balanced_accuracy_score(_labels(validation, seeded), predicted)))
    return scores, len(validation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a classification model name, e.g. simple_cnn_pneumonia")
    parser.add_argument("variants", nargs="+", help="JSON objects, e.g. '{}' '{\"data\": {\"image_size\": 64}}'")
    parser.add_argument("--env", default="shared_data")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    parameters = OmegaConfigLoader("conf", env=args.env, **CONFIG_LOADER_ARGS)["parameters"]
    block = parameters["classification"][args.model]
    inputs_path = Path(f"data/05_model_input/{args.env}/classification_inputs.csv")
    if not inputs_path.exists():
        raise SystemExit(f"{inputs_path}: missing; run `kedro run --pipelines=classification --env={args.env}` first")
    inputs = pd.read_csv(inputs_path)
    for text in args.variants:
        scores, n_validation = validation_scores(inputs, block, json.loads(text), args.seeds)
        spread = np.std(scores, ddof=1) if len(scores) > 1 else float("nan")
        print(f"{args.model} {text}: validation balanced accuracy {np.mean(scores):.3f} +- {spread:.3f} "
              f"{[round(s, 3) for s in scores]} (n_validation {n_validation})")


if __name__ == "__main__":
    main()
