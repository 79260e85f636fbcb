"""Shared fixtures for the segmentation library tests (tiny, CPU-only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Must be set before TensorFlow is first imported: quiet logs, never touch a GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

SHENZHEN_MASKS = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / ("cxr_segmentation/shenzhen/masks")
)


@pytest.fixture(autouse=True)
def _float32_policy():
    """Leave the global Keras dtype policy as float32 after every test."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:  # NumPy-only tests never import TensorFlow
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def shenzhen_mask_paths() -> list[Path]:
    """A few real Shenzhen lung masks; skips when the shared data is absent."""
    paths = sorted(SHENZHEN_MASKS.glob("*.png"))[::40]
    if not paths:
        pytest.skip(f"shared data not found at {SHENZHEN_MASKS}")
    return paths
