"""Tiny models and images for the inference tests (built on the fly, never trained)."""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np

from tests.conftest import write_png

OLD_VERSION = "2026-01-01T00.00.00.000Z"
NEW_VERSION = "2026-02-01T00.00.00.000Z"
SIZE = 32  # the tiny models' input size


def threshold_model(bright_is_lung: bool = True, size: int = SIZE) -> keras.Model:
    """A 1x1 convolution + sigmoid: probability ~1 where the image is bright (or dark)."""
    inputs = keras.Input((size, size, 1))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    model = keras.Model(inputs, outputs)
    sign = 1.0 if bright_is_lung else -1.0
    model.layers[-1].set_weights([np.full((1, 1, 1, 1), 40.0 * sign, np.float32), np.array([-20.0 * sign], np.float32)])
    return model


def tiny_classifier(n_classes: int, size: int = SIZE) -> keras.Model:
    from covid_imaging.classification.models import build_classifier

    keras.utils.set_random_seed(0)
    return build_classifier("simple_cnn", n_classes=n_classes, input_size=size, filters=(4, 8), dense_units=8)


def save_version(
    project: Path, root: str, name: str, version: str, model: keras.Model, dataset: str = "synthetic_demo"
) -> Path:
    """Save ``model`` where the catalog's versioned entry ``<root>.<name>.model`` would for
    the data set ``dataset`` (the base environment's demo set by default)."""
    path = project / "data/06_models" / dataset / root / f"{name}.keras" / version / f"{name}.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def radiograph(height: int, width: int, seed: int = 0, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A dark image with two bright 'lungs' and the mask of the lungs (shifted by ``shift`` px)."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(30, 4, (height, width)), 0, 255).astype(np.uint8)
    mask = np.zeros((height, width), np.uint8)
    for cx in (width // 3, 2 * width // 3):
        axes = (width // 8, height // 3)
        cv2.ellipse(image, (cx, height // 2), axes, 0, 0, 360, 210, -1)
        cv2.ellipse(mask, (cx + shift, height // 2), axes, 0, 0, 360, 255, -1)
    return image, mask


def write_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Images of several formats and sizes under ``folder`` (one in a sub-folder), plus a
    corrupt PNG; returns ``relative stem -> (height, width)`` of the good ones."""
    sizes = {}
    image, _ = radiograph(96, 80, seed=1)
    write_png(folder / "a.png", image)
    sizes["a"] = image.shape
    image, _ = radiograph(120, 150, seed=2)
    write_png(folder / "nested" / "b16.png", image.astype(np.uint16) * 257)  # 16-bit
    sizes["nested/b16"] = image.shape
    image, _ = radiograph(100, 100, seed=3)
    assert cv2.imwrite(str(folder / "c.jpg"), cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))  # colour JPEG
    sizes["c"] = image.shape
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return sizes
