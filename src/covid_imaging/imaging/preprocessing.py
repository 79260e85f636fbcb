"""The image preprocessing chain, step by step, with OpenCV.

Reference design (COVID-19 CXR papers): gray → resize → Gaussian blur → morphological
gradient (applied twice) → CLAHE → normalisation. Every step is switchable through
parameters; the defaults in ``conf/base/parameters/preprocessing.yml`` say which are on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from covid_imaging.params import merge_params

INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


@dataclass(frozen=True)
class PreprocessingConfig:
    """Typed view of the ``preprocessing`` parameters block."""

    image_size: int = 256
    interpolation: str = "area"
    resize_mode: str = "pad"  # "pad": keep the aspect ratio, pad to square; "stretch": squash
    blur_enabled: bool = True
    blur_kernel_size: int = 3
    blur_sigma: float = 0.0
    gradient_enabled: bool = False
    gradient_kernel_size: int = 3
    gradient_iterations: int = 2
    clahe_enabled: bool = True
    clahe_clip_limit: float = 2.0
    clahe_tile_grid_size: int = 8
    normalisation: str = "minmax"  # "minmax" (stretch to 0..255) or "none"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PreprocessingConfig:
        """Build from the nested YAML block (``resize``, ``gaussian_blur``, ...); a key
        the block does not have (a typo) raises with its dotted name."""
        p = merge_params(PREPROCESSING_DEFAULTS, params, where="preprocessing")
        resize, blur, gradient, clahe = p["resize"], p["gaussian_blur"], p["morphological_gradient"], p["clahe"]
        config = cls(
            image_size=int(resize["size"]),
            interpolation=str(resize["interpolation"]),
            resize_mode=str(resize["mode"]),
            blur_enabled=bool(blur["enabled"]),
            blur_kernel_size=int(blur["kernel_size"]),
            blur_sigma=float(blur["sigma"]),
            gradient_enabled=bool(gradient["enabled"]),
            gradient_kernel_size=int(gradient["kernel_size"]),
            gradient_iterations=int(gradient["iterations"]),
            clahe_enabled=bool(clahe["enabled"]),
            clahe_clip_limit=float(clahe["clip_limit"]),
            clahe_tile_grid_size=int(clahe["tile_grid_size"]),
            normalisation=str(p["normalisation"]),
        )
        config.validate()
        return config

    def validate(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"preprocessing.resize.size must be >= 8, got {self.image_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocessing.resize.interpolation must be one of {sorted(INTERPOLATIONS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"preprocessing.resize.mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.blur_kernel_size % 2 == 0 or self.blur_kernel_size < 1:
            raise ValueError(f"preprocessing.gaussian_blur.kernel_size must be odd, got {self.blur_kernel_size}")
        if self.normalisation not in ("minmax", "none"):
            raise ValueError(f"preprocessing.normalisation must be 'minmax' or 'none', got {self.normalisation!r}")


RESIZE_MODES = ("pad", "stretch")

_DEFAULTS = PreprocessingConfig()
# The complete ``preprocessing`` block with the defaults above (one source: the dataclass).
PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "output_root": None,  # where the pipeline writes (the catalog's concern, not the chain's)
    "resize": {"size": _DEFAULTS.image_size, "interpolation": _DEFAULTS.interpolation, "mode": _DEFAULTS.resize_mode},
    "gaussian_blur": {"enabled": _DEFAULTS.blur_enabled, "kernel_size": _DEFAULTS.blur_kernel_size,
                      "sigma": _DEFAULTS.blur_sigma},
    "morphological_gradient": {"enabled": _DEFAULTS.gradient_enabled, "kernel_size": _DEFAULTS.gradient_kernel_size,
                               "iterations": _DEFAULTS.gradient_iterations},
    "clahe": {"enabled": _DEFAULTS.clahe_enabled, "clip_limit": _DEFAULTS.clahe_clip_limit,
              "tile_grid_size": _DEFAULTS.clahe_tile_grid_size},
    "normalisation": _DEFAULTS.normalisation,
}


@dataclass(frozen=True)
class SquareGeometry:
    """Where an image of ``height`` x ``width`` lands in a ``size`` x ``size`` square."""

    top: int
    left: int
    content_height: int
    content_width: int


def square_geometry(height: int, width: int, size: int, mode: str = "pad") -> SquareGeometry:
    """The content box of the resized image: the whole square when stretching, centred when padding."""
    if mode == "stretch":
        return SquareGeometry(0, 0, size, size)
    if mode != "pad":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    scale = size / max(height, width)
    content_height = max(1, min(size, round(height * scale)))
    content_width = max(1, min(size, round(width * scale)))
    return SquareGeometry((size - content_height) // 2, (size - content_width) // 2, content_height, content_width)


def _to_square(image: np.ndarray, size: int, mode: str, interpolation: int) -> np.ndarray:
    box = square_geometry(image.shape[0], image.shape[1], size, mode)
    resized = cv2.resize(image, (box.content_width, box.content_height), interpolation=interpolation)
    if mode == "stretch":
        return resized
    # Black padding: X-rays often have black borders already, and augmentation adds more.
    square = np.zeros((size, size), dtype=image.dtype)
    square[box.top : box.top + box.content_height, box.left : box.left + box.content_width] = resized
    return square


def resize_image(gray: np.ndarray, size: int, interpolation: str = "area", mode: str = "stretch") -> np.ndarray:
    """Resize to ``size`` x ``size`` (the models take square inputs), squashed or padded."""
    return _to_square(gray, size, mode, INTERPOLATIONS[interpolation])


def resize_mask(mask: np.ndarray, size: int, mode: str = "stretch") -> np.ndarray:
    """Resize a binary mask with nearest-neighbour so it stays binary; returns {0, 255}."""
    resized = _to_square(mask, size, mode, cv2.INTER_NEAREST)
    return np.where(resized > 0, 255, 0).astype(np.uint8)


def restore_native_size(
    square_map: np.ndarray, height: int, width: int, mode: str, square_size: int | None = None
) -> np.ndarray:
    """Undo ``resize_image``: crop the content box of a square map and resize it to ``height`` x ``width``.

    ``square_size`` is the side the image was padded at (the preprocessed size); a map
    at another side (the model's) is first brought to it, so the crop is exact.
    Bilinear, for probability maps: threshold and post-process at the native size.
    """
    if square_map.ndim != 2 or square_map.shape[0] != square_map.shape[1]:
        raise ValueError(f"expected a square 2-D map, got shape {square_map.shape}")
    square_map = square_map.astype(np.float32)
    size = int(square_size or square_map.shape[0])
    if square_map.shape[0] != size:
        square_map = cv2.resize(square_map, (size, size), interpolation=cv2.INTER_LINEAR)
    box = square_geometry(height, width, size, mode)
    content = square_map[box.top : box.top + box.content_height, box.left : box.left + box.content_width]
    return cv2.resize(content, (width, height), interpolation=cv2.INTER_LINEAR)


def morphological_gradient(gray: np.ndarray, kernel_size: int, iterations: int) -> np.ndarray:
    """Dilation minus erosion, repeated ``iterations`` times (edges of structures)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (kernel_size, kernel_size))
    return cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, kernel, iterations=iterations)


def apply_clahe(gray: np.ndarray, clip_limit: float, tile_grid_size: int) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation."""
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid_size, tile_grid_size))
    return clahe.apply(gray)


def normalise_minmax(gray: np.ndarray) -> np.ndarray:
    """Stretch intensities to the full 0..255 range (a constant image stays unchanged)."""
    if gray.size and gray.min() == gray.max():  # OpenCV would map it to all zeros
        return gray.copy()
    return cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX)


def preprocess_gray(gray: np.ndarray, config: PreprocessingConfig) -> np.ndarray:
    """Run the configured chain on a 2-D uint8 image; returns 2-D uint8."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"preprocess_gray expects a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    image = resize_image(gray, config.image_size, config.interpolation, config.resize_mode)
    if config.blur_enabled:
        image = cv2.GaussianBlur(image, (config.blur_kernel_size, config.blur_kernel_size), config.blur_sigma)
    if config.gradient_enabled:
        image = morphological_gradient(image, config.gradient_kernel_size, config.gradient_iterations)
    if config.clahe_enabled:
        image = apply_clahe(image, config.clahe_clip_limit, config.clahe_tile_grid_size)
    if config.normalisation == "minmax":
        image = normalise_minmax(image)
    return image
