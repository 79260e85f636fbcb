"""MirroredStrategy (``training.multi_gpu``) on the CPU: two logical devices, the project's
model builder and training loop, the same losses as one device."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

# Logical devices must be configured before TensorFlow initialises, so in a fresh process.
SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from covid_imaging.segmentation.models import build_segmentation_model
    from covid_imaging.segmentation.training import set_global_seed, train_segmentation_model

    rng = np.random.default_rng(0)
    masks = np.zeros((16, 32, 32, 1), np.float32)
    masks[:, 8:24, 6:14] = 1
    masks[:, 8:24, 18:26] = 1
    images = np.clip(0.3 + 0.5 * masks + rng.normal(0, 0.1, masks.shape), 0, 1).astype(np.float32)

    def data():
        return tf.data.Dataset.from_tensor_slices((images, masks)).batch(8)

    def train(strategy):
        set_global_seed(3)
        with strategy.scope():
            # no dropout or batch norm: both are per replica, so only these would differ
            model = build_segmentation_model("unet", input_size=32, base_filters=4, dropout_rate=0.0, batch_norm=False)
        model, history = train_segmentation_model(
            model, data(), data(),
            {"epochs": 3, "early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False}, "jit_compile": False},
        )
        return history, model.predict(images, verbose=0)

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one_history, one_prediction = train(tf.distribute.get_strategy())
    two_history, two_prediction = train(mirrored)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "one": one_history["loss"], "two": two_history["loss"],
        "val_one": one_history["val_loss"], "val_two": two_history["val_loss"],
        "prediction_difference": float(np.abs(one_prediction - two_prediction).max()),
    }))
    """
)


def test_mirrored_strategy_over_two_cpu_devices_trains_like_one_device():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, cwd=PROJECT_ROOT,
        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["replicas"] == 2
    # Each replica computes half of every batch of 8; the gradients are all-reduced, so
    # the training follows the one-device run up to float rounding.
    assert measured["one"] == pytest.approx(measured["two"], rel=1e-3), measured
    assert measured["val_one"] == pytest.approx(measured["val_two"], rel=1e-3), measured
    assert measured["prediction_difference"] < 1e-3, measured
    assert measured["one"][-1] < measured["one"][0]  # it did learn
