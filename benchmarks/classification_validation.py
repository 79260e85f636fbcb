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
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from covid_imaging.pipelines.classification.nodes import (
    checked_data,
    split_balanced_accuracy,
    train_classification_model,
)


def validation_scores(inputs: pd.DataFrame, block: dict, variant: dict, n_seeds: int) -> tuple[list[float], int]:
    """Each seed's validation balanced accuracy, and the validation size."""
    data = checked_data({**block["data"], **variant.get("data", {}), "cross_validation": False})
    training = {phase: {**values, **variant.get("training", {})} for phase, values in block["training"].items()}
    scores, n_validation = [], 0
    for offset in range(n_seeds):
        seeded = {**data, "seed": int(data["seed"]) + offset}
        model, _ = train_classification_model(inputs, block["model"], training, seeded)
        score, n_validation = split_balanced_accuracy(model, inputs, seeded, "validation")
        scores.append(score)
    return scores, n_validation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a classification model name, e.g. simple_cnn_pneumonia")
    parser.add_argument("variants", nargs="+", help="JSON objects, e.g. '{}' '{\"data\": {\"image_size\": 64}}'")
    parser.add_argument("--env", default="shared_data")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    project = Path(__file__).resolve().parents[1]
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=args.env) as session:
        context = session.load_context()  # the project's catalog: wherever this environment puts its inputs
        block = context.params["classification"][args.model]
        if not context.catalog.exists("classification_inputs"):
            raise SystemExit(f"classification_inputs of --env={args.env} missing; run "
                             f"`kedro run --pipelines=classification --env={args.env}` first")
        inputs = context.catalog.load("classification_inputs")
    for text in args.variants:
        scores, n_validation = validation_scores(inputs, block, json.loads(text), args.seeds)
        spread = np.std(scores, ddof=1) if len(scores) > 1 else float("nan")
        print(f"{args.model} {text}: validation balanced accuracy {np.mean(scores):.3f} +- {spread:.3f} "
              f"{[round(s, 3) for s in scores]} (n_validation {n_validation})")


if __name__ == "__main__":
    main()
