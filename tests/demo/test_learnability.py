"""The synthetic demo classes are learnable: a small CNN on generated radiographs beats
chance by a clear margin (a demo whose classifiers learn nothing shows nothing)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sklearn.metrics import balanced_accuracy_score

from covid_imaging.classification.models import build_simple_cnn
from covid_imaging.classification.training import train_classifier
from covid_imaging.demo.synthetic import CXR_CLASSES, synthetic_chest_xray
from covid_imaging.training import seed_everything

SIZE = 64


def _radiographs(first_seed: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for index, label in enumerate(CXR_CLASSES):
        for k in range(per_class):  # every image its own synthetic patient
            images.append(synthetic_chest_xray(np.random.default_rng(first_seed + 1000 * index + k), SIZE, label)[0])
            labels.append(index)
    return np.stack(images)[..., None].astype(np.float32) / 255.0, np.array(labels)


def test_a_small_cnn_learns_the_four_synthetic_classes_well_above_chance():
    train_x, train_y = _radiographs(0, 30)
    test_x, test_y = _radiographs(500, 10)  # other patients
    seed_everything(0)
    model = build_simple_cnn(len(CXR_CLASSES), input_size=SIZE, filters=(16, 32, 64), dense_units=64, dropout=0.3)
    train = tf.data.Dataset.from_tensor_slices((train_x, train_y)).shuffle(len(train_y), seed=0).batch(16)
    model, _ = train_classifier(
        model, train, None,
        {"epochs": 20, "jit_compile": False, "seed": 0, "early_stopping": {"enabled": False},
         "reduce_lr": {"enabled": False}},
    )
    predicted = model.predict(test_x, verbose=0).argmax(axis=1)
    balanced = balanced_accuracy_score(test_y, predicted)
    assert balanced >= 0.6, balanced  # chance: 0.25
