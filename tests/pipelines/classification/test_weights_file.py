"""Pretrained weights for users who have them: ``model.weights: <file>`` through the
training node, and the reference two-phase recipe (frozen base + new top, then the last
11 backbone layers at 1e-4) changes exactly the layers it should."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from covid_imaging.classification.models import build_resnet50
from covid_imaging.classification.transfer import iter_leaf_layers
from covid_imaging.pipelines.classification.nodes import checked_data, train_classification_model
from covid_imaging.training import seed_everything

from ...classification.helpers import leaf_weights, weights_equal

pytestmark = pytest.mark.slow  # a ResNet50 trained in two phases: about a minute on 2 free cores

SIZE = 32
PHASE = {"epochs": 1, "run_eagerly": True, "jit_compile": False, "verbose": 0}


@pytest.fixture
def inputs(tmp_path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for index in range(12):
        path = tmp_path / f"img{index}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
        rows.append({"image_id": f"img{index}", "image_path": str(path), "label": "abc"[index % 3],
                     "split": "train" if index < 9 else "validation", "in_training_sample": True,
                     "default_variant": "whole", "source": "synthetic_demo"})
    return pd.DataFrame(rows)


def test_weights_file_loads_and_the_two_phase_recipe_changes_exactly_the_intended_layers(inputs, tmp_path):
    # A freshly built backbone saved locally stands in for a user's pretrained file.
    donor = build_resnet50(3, input_size=SIZE).get_layer("resnet50")
    weights_file = tmp_path / "resnet50_notop.weights.h5"
    donor.save_weights(weights_file)
    saved = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in iter_leaf_layers(donor)
             if layer.weights}

    model_params = {"builder": "resnet50", "strategy": "auto", "weights": str(weights_file), "freeze_base": True,
                    "unfreeze_last_n": 11}
    data = checked_data({"classes": ["a", "b", "c"], "image_size": SIZE, "batch_size": 3, "seed": 0,
                         "augment": False, "image_variant": "whole"})
    training = {"head": {**PHASE, "learning_rate": 0.01}, "fine_tune": PHASE}
    model, history = train_classification_model(inputs, model_params, training, data)

    assert history["phase"] == [1.0, 2.0]
    assert history["lr"] == pytest.approx([0.01, 1e-4])  # phase 2 at the recipe's 1e-4
    after = leaf_weights(model)
    backbone = model.get_layer("resnet50")
    last_11 = {layer.name for layer in backbone.layers[-11:]}
    batchnorm = {layer.name for layer in iter_leaf_layers(backbone) if "BatchNormalization" in type(layer).__name__}
    intended = (last_11 - batchnorm) & set(saved)
    # The last 11 layers are conv5_block2_out and conv5_block3 (3 convs, 3 BatchNorms, ...).
    assert intended == {"conv5_block3_1_conv", "conv5_block3_2_conv", "conv5_block3_3_conv"}
    changed = {name for name in saved if not weights_equal(saved[name], after[name])}
    # Only the unfrozen convolutions moved; every other backbone layer, the BatchNorm
    # moving statistics included, is still exactly what the file holds.
    assert changed == intended

    # The new top trained too: rebuilt as the node built it (same seed), it differs.
    seed_everything(0)
    initial = build_resnet50(3, input_size=SIZE, weights=weights_file, freeze_base=True)
    assert not weights_equal(leaf_weights(initial)["classifier"], after["classifier"])
    assert weights_equal(leaf_weights(initial)["conv1_conv"], after["conv1_conv"])
