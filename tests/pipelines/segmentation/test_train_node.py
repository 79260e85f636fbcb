"""The training node: what it hands to the catalog, whatever precision trained the model."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from covid_imaging.pipelines.segmentation.nodes import train_segmentation


def _table(folder, n: int = 6) -> pd.DataFrame:
    rows = []
    for index in range(n):
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 5 + index % 3 : 14] = 255
        mask[8:24, 18:27] = 255
        image = np.clip(60 + 0.5 * mask + np.random.default_rng(index).normal(0, 10, mask.shape), 0, 255)
        image_path, mask_path = folder / f"image{index}.png", folder / f"mask{index}.png"
        cv2.imwrite(str(image_path), image.astype(np.uint8))
        cv2.imwrite(str(mask_path), mask)
        rows.append({"image_id": f"i{index}", "split": "validation" if index >= 4 else "train",
                     "image_path": str(image_path), "mask_path": str(mask_path), "mask_convention": "nlm"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("native_bfloat16", [True, False])
def test_a_unet_trained_in_bfloat16_is_saved_computing_in_float32(tmp_path, monkeypatch, native_bfloat16):
    # Where the CPU computes bfloat16 natively the U-Net trains in it; the model the
    # catalog saves computes in float32 either way, so it predicts alike on any machine.
    monkeypatch.setattr("covid_imaging.training.core.native_bfloat16_cpu", lambda: native_bfloat16)
    trained_in = []
    monkeypatch.setattr(
        "covid_imaging.pipelines.segmentation.nodes.train_segmentation_model",
        lambda model, *args, **kwargs: (trained_in.append(model.get_layer(index=1).compute_dtype), (model, {}))[1],
    )
    model, _ = train_segmentation(
        _table(tmp_path),
        {"builder": "unet", "base_filters": 4, "dropout_rate": 0.0, "batch_norm": True},
        {"epochs": 1, "mixed_precision": "bfloat16", "jit_compile": False},
        {"enabled": False},
        {"image_size": 32, "batch_size": 2, "seed": 1},
    )
    assert trained_in == ["bfloat16" if native_bfloat16 else "float32"]
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    assert model.predict_on_batch(np.zeros((1, 32, 32, 1), np.float32)).dtype == np.float32
