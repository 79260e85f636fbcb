"""Applying trained models to new images, one batch at a time.

Per image: decode (any format ingestion accepts) → the training preprocessing → the
lung segmentation model → the probability map brought back to the image's own size
and post-processed there (:func:`covid_imaging.segmentation.inference.native_lung_mask`)
→ lung area, left/right areas and QC flags; for chest X-rays each chosen classifier
on the input it was trained on (the lung crop made exactly as the classification
pipeline's ``mask_lungs`` makes it, or the whole image) with a Grad-CAM overlay.
Models only ever see images of their own modality (``registry`` guard), so a CT slice
goes to the CT classifiers and never to the X-ray segmentation model or classifiers.

Nothing of an image is kept in memory once its files are produced: its row of the
predictions table, its class probabilities and its report thumbnail go to the run's
spool on disk (``pipelines/inference/nodes.SpooledRun``), so memory is one batch's.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import cv2
import numpy as np
import pandas as pd

from covid_imaging.classification.masking import (
    apply_lung_mask,
    black_out_lungs,
    lung_area_fraction,
    lung_mask_at,
)
from covid_imaging.compute import ComputeConfig, ordered_map
from covid_imaging.imaging.io import decode_image, pixel_budget, to_gray_uint8
from covid_imaging.imaging.preprocessing import PreprocessingConfig, preprocess_gray
from covid_imaging.inference.models import LoadedModel
from covid_imaging.registry import load_registry, modalities
from covid_imaging.segmentation._params import merge_params
from covid_imaging.segmentation.conventions import DEFAULT_HEAD, head_index, model_conventions
from covid_imaging.segmentation.inference import load_native_mask, native_lung_mask
from covid_imaging.segmentation.metrics import dice_score, iou_score
from covid_imaging.training.inputs import resize_to_model_input

logger = logging.getLogger(__name__)

Loaders = Mapping[str, Callable[[], bytes]]
QC_FLAGS = ("no_lung", "one_lung", "implausible_area", "many_components", "low_confidence")

DEFAULT_QC_PARAMS: dict[str, Any] = {
    "no_lung_fraction": 0.01,  # lung area below this share of the image: no lung found
    "min_lung_fraction": 0.08,  # plausible lung area, share of the image
    "max_lung_fraction": 0.65,
    "min_side_share": 0.2,  # the smaller side below this share of the lung area: one lung only
    "max_components": 4,  # components of the thresholded map (>= min_component_fraction)
    "min_component_fraction": 0.001,
    "min_mean_probability": 0.8,  # mean model probability inside the mask below this: low confidence
}


@dataclass(frozen=True)
class InferenceModels:
    """The models of one inference run."""

    segmentation: LoadedModel | None
    classifiers: tuple[LoadedModel, ...] = ()

    def versions(self) -> dict[str, str]:
        models = ([self.segmentation] if self.segmentation else []) + list(self.classifiers)
        return {m.namespace: m.version for m in models}


@dataclass(frozen=True)
class InferenceSettings:
    """Everything besides the models that decides the outputs (from the parameters)."""

    preprocessing: Mapping[str, Any]
    segmentation_postprocessing: Mapping[str, Any]
    lung_masking: Mapping[str, Any]
    qc: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_QC_PARAMS))
    gradcam: bool = True
    gradcam_alpha: float = 0.4
    contour_thickness: int = 2
    thumbnail_size: int = 160
    write_files: bool = True
    # Where each image's decoding, preprocessing and post-processing run (the ``compute``
    # parameters: local threads by default, or a Dask cluster).
    compute: Mapping[str, Any] = field(default_factory=dict)
    # Which head of a model with one head per mask convention draws the output masks
    # (and is scored against true masks): a convention name for every image, or None for
    # each image's source's convention in ``source_conventions`` where the model has a
    # head for it, else the default (first) head. Classifier lung crops always use the
    # default head, as the classification pipeline's lung masking does.
    mask_convention: str | None = None
    source_conventions: Mapping[str, str] = field(default_factory=dict)

    @property
    def preprocessing_config(self) -> PreprocessingConfig:
        return PreprocessingConfig.from_params(dict(self.preprocessing))


def resolve_qc_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return merge_params(DEFAULT_QC_PARAMS, params, where="inference.qc")


@dataclass
class ImageResult:
    """What one image produced: its table row, its files and its report thumbnail."""

    row: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    thumbnail: str = ""
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    overlay: np.ndarray | None = None  # native-size overlay until the thumbnail is made


# ------------------------------------------------------------------ small pure helpers


def encode_png_any(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {image.shape} as PNG")
    return buffer.tobytes()


def thumbnail_data_uri(bgr: np.ndarray, size: int) -> str:
    """A small JPEG of ``bgr`` (longer side ``size``) as a ``data:`` URI, for the offline report."""
    scale = size / max(bgr.shape[:2])
    if scale < 1:
        bgr = cv2.resize(bgr, (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("cannot encode the thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.tobytes()).decode("ascii")


def contour_overlay(gray: np.ndarray, mask: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The image (BGR) with the mask's outline drawn in green; thickness scaled to a 512 px image."""
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    scaled = max(1, round(thickness * max(gray.shape) / 512))
    cv2.drawContours(bgr, contours, -1, (0, 255, 0), scaled)
    return bgr


def lung_statistics(mask: np.ndarray, probability_map: np.ndarray, qc: Mapping[str, Any]) -> dict[str, Any]:
    """Lung area, left/right areas and the QC flags of a native-size mask and probability map.

    Radiographs are displayed as if facing the patient, so the patient's right lung is
    the component(s) whose centre lies in the left half of the image.
    """
    binary = (mask > 0).astype(np.uint8)
    total = int(binary.sum())
    _, _, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas, centres_x = stats[1:, cv2.CC_STAT_AREA], centroids[1:, 0]
    width = binary.shape[1]
    right = int(areas[centres_x < width / 2].sum())
    left = int(areas[centres_x >= width / 2].sum())
    fraction = total / binary.size
    thresholded = (probability_map > 0.5).astype(np.uint8)
    _, _, raw_stats, _ = cv2.connectedComponentsWithStats(thresholded, connectivity=8)
    min_component = float(qc["min_component_fraction"]) * binary.size
    n_components = int((raw_stats[1:, cv2.CC_STAT_AREA] >= min_component).sum())
    mean_probability = float(probability_map[binary > 0].mean()) if total else 0.0
    flags = {
        "no_lung": fraction < float(qc["no_lung_fraction"]),
        "one_lung": total > 0 and min(left, right) < float(qc["min_side_share"]) * total,
        "implausible_area": not float(qc["min_lung_fraction"]) <= fraction <= float(qc["max_lung_fraction"]),
        "many_components": n_components > int(qc["max_components"]),
        "low_confidence": mean_probability < float(qc["min_mean_probability"]),
    }
    return {
        "lung_area_fraction": fraction,
        "lung_area_px": total,
        "right_lung_area_px": right,
        "left_lung_area_px": left,
        "n_components": n_components,
        "mean_lung_probability": mean_probability,
        **{f"qc_{name}": bool(value) for name, value in flags.items()},
        "qc_flags": ";".join(name for name, value in flags.items() if value),
    }


def image_variant(model: LoadedModel, lung_masking: Mapping[str, Any]) -> str:
    """The input a classifier was trained on: ``auto`` is the lung crop when lung masking is on."""
    variant = model.spec.image_variant or "whole"
    if variant == "auto":
        return "lungs" if bool(lung_masking.get("enabled", True)) else "whole"
    return variant


def classifier_input(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """As the classifiers' training input (``classification.training._load_image``): an
    anti-aliased bilinear resize of the 8-bit PNG to ``size``, scaled to [0, 1]."""
    resized = resize_to_model_input(image[..., None], size).numpy()
    return np.repeat(resized, channels, axis=-1) if channels > 1 else resized


# ------------------------------------------------------------------ per image, on the compute map
# Module-level functions of picklable arguments: the ``processes`` and ``dask`` backends
# send them to other processes.


def read_image(item: tuple[Callable[[], bytes], int], config: PreprocessingConfig) -> tuple[np.ndarray, np.ndarray] | str:
    """``(gray, preprocessed)`` of the file ``load()`` returns, decoded within ``max_pixels``
    (``item = (load, max_pixels)``), or why it cannot be read: a string, because not every
    decoder's exception survives the trip back from a Dask worker."""
    load, max_pixels = item
    try:
        gray = to_gray_uint8(decode_image(load(), max_pixels))
        return gray, preprocess_gray(gray, config)
    except Exception as error:  # noqa: BLE001 - reported as a rejected file by the caller
        return str(error) or type(error).__name__


@dataclass(frozen=True)
class SegmentationPost:
    """What turns an image's probability maps into its segmentation outputs (from the settings)."""

    namespace: str
    preprocessing: Mapping[str, Any]
    postprocessing: Mapping[str, Any]
    qc: Mapping[str, Any]
    contour_thickness: int
    write_files: bool
    # The classifiers' lung crop: the preprocessed size and lung_masking.postprocessing;
    # None when no chosen classifier takes a lung crop.
    crop: tuple[int, Mapping[str, Any] | None] | None


@dataclass
class SegmentationOutputs:
    row: dict[str, Any]
    files: dict[str, bytes]
    overlay: np.ndarray
    crop_mask: np.ndarray | None  # the lung mask at the preprocessed size, for the classifiers' lung crop


def segmentation_outputs(
    item: tuple[str, np.ndarray, np.ndarray, np.ndarray, Callable[[], bytes] | None], post: SegmentationPost
) -> SegmentationOutputs:
    """Native mask, overlay, statistics and (with a true mask) Dice/IoU of one image.

    ``item = (image_id, gray, probability_map, crop_map, load_true_mask)``: the map of the
    head that draws the output mask, and the default head's map that the classifiers'
    lung crop is made from (as the classification pipeline's ``mask_lungs`` makes it).
    """
    image_id, gray, probability_map, crop_map, load_true_mask = item
    height, width = gray.shape
    native_map, native_mask = native_lung_mask(probability_map, height, width, post.preprocessing, post.postprocessing)
    row = {"segmentation_model": post.namespace, **lung_statistics(native_mask, native_map, post.qc)}
    overlay = contour_overlay(gray, native_mask, post.contour_thickness)
    files = {}
    if post.write_files:
        files = {f"masks/{image_id}.png": encode_png_any(native_mask.astype(np.uint8) * 255),
                 f"overlays/{image_id}.png": encode_png_any(overlay)}
        row |= {"mask_file": f"masks/{image_id}.png", "overlay_file": f"overlays/{image_id}.png"}
    if load_true_mask is not None:
        truth = load_native_mask(load_true_mask, height, width)
        row |= {"dice_native": dice_score(native_mask, truth), "iou_native": iou_score(native_mask, truth)}
    crop_mask = None
    if post.crop is not None:
        size, lung_postprocessing = post.crop
        crop_mask = lung_mask_at((size, size), crop_map, lung_postprocessing)
    return SegmentationOutputs(row, files, overlay, crop_mask)


# ------------------------------------------------------------------ the engine


def _model_size(model: Any) -> tuple[int, int]:
    shape = model.input_shape
    return int(shape[1]), int(shape[-1])


def _segment(inputs: pd.DataFrame, images: np.ndarray, model: LoadedModel) -> np.ndarray:
    """``(N, H, W, heads)`` probability maps of the (cxr) rows ``inputs`` from their preprocessed ``images``."""
    size, _ = _model_size(model.model)
    batch = np.stack([resize_to_model_input(image[..., None], size).numpy() for image in images])  # as trained
    return np.asarray(model.model.predict_on_batch(batch), dtype=np.float32)


def _classify(inputs: pd.DataFrame, images: np.ndarray, model: LoadedModel) -> np.ndarray:
    """Class probabilities of the rows ``inputs`` from their classifier-ready ``images``."""
    return np.asarray(model.model.predict_on_batch(images), dtype=np.float32)


def _guarded(func: Callable[..., Any], modality: str) -> Callable[..., Any]:
    # The classification pipelines' guard: refuses a table holding another modality.
    from covid_imaging.pipelines.classification.nodes import ModalityGuarded  # noqa: PLC0415

    return ModalityGuarded(func, modality)


class InferenceEngine:
    """Turns batches of manifest rows into :class:`ImageResult` objects.

    The models predict in this process; each image's decoding, preprocessing and
    post-processing run on the ``compute`` backend (all local cores by default, or a
    Dask cluster), one task per image, with the same results whatever the backend.
    """

    def __init__(self, models: InferenceModels, settings: InferenceSettings) -> None:
        self.models, self.settings = models, settings
        self.config = settings.preprocessing_config
        self.qc = resolve_qc_params(settings.qc)
        # One task per image and a batch's images all in flight: a batch is the unit of memory.
        self.compute = replace(ComputeConfig.from_params(settings.compute), chunk_size=1)
        self._segment = _guarded(_segment, models.segmentation.spec.modality) if models.segmentation else None
        self._classifiers = [(m, _guarded(_classify, m.spec.modality), image_variant(m, settings.lung_masking))
                             for m in models.classifiers]
        needs_lung_crop = any(variant != "whole" for _, _, variant in self._classifiers)
        self._heads = model_conventions(models.segmentation.model) if models.segmentation else ()
        if settings.mask_convention and models.segmentation is None:
            raise ValueError("inference.mask_convention is set but inference.segmentation_model is null: no masks to draw")
        if settings.mask_convention and settings.mask_convention not in self._heads:
            raise ValueError(
                f"inference.mask_convention: {models.segmentation.namespace} has no {settings.mask_convention!r} "
                f"head; its mask convention heads are {list(self._heads)}"
            )
        lung_model = load_registry().lung_segmentation_model
        for model, _, variant in self._classifiers:
            if variant != "whole" and models.segmentation is None:
                raise ValueError(
                    f"{model.namespace} was trained on {variant!r} images, which need lung masks: set "
                    "inference.segmentation_model"
                )
            if variant != "whole" and models.segmentation.spec.name != lung_model:
                # its crops would come from another network than the one it was trained on
                raise ValueError(
                    f"{model.namespace} was trained on {variant!r} images masked by {lung_model!r} "
                    f"(lung_masking.segmentation_model), but inference.segmentation_model is "
                    f"{models.segmentation.spec.name!r}: set inference.segmentation_model={lung_model}"
                )
        self._post = SegmentationPost(
            namespace=models.segmentation.namespace if models.segmentation else "",
            preprocessing=dict(settings.preprocessing), postprocessing=dict(settings.segmentation_postprocessing),
            qc=self.qc, contour_thickness=settings.contour_thickness, write_files=settings.write_files,
            crop=(self.config.image_size, settings.lung_masking.get("postprocessing")) if needs_lung_crop else None,
        )

    def _map(self, function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        return list(ordered_map(function, items, replace(self.compute, in_flight=max(1, len(items)))))

    # -- per batch

    def process(self, rows: pd.DataFrame, raw_files: Loaders) -> tuple[list[ImageResult], list[dict[str, str]]]:
        """Results for the decodable rows of ``rows`` and rejected-file rows for the others."""
        rows = rows.assign(modality=modalities(rows).to_numpy()).reset_index(drop=True)
        results, rejected, kept, grays, preprocessed = [], [], [], [], []
        records = rows.to_dict("records")
        reads = self._map(partial(read_image, config=self.config),
                          [(raw_files[row["image_key"]], pixel_budget(row.get("width"), row.get("height"))) for row in records])
        for row, outcome in zip(records, reads, strict=True):
            if isinstance(outcome, str):  # a file that changed since it was listed: report, go on
                rejected.append({"file": row.get("image_uri") or row["image_key"], "reason": f"cannot be read at inference: {outcome}",
                                 "severity": "error", "image_key": row["image_key"], "mask_key": row.get("mask_key", "")})
                continue
            kept.append(row)
            grays.append(outcome[0])
            preprocessed.append(outcome[1])
        if not kept:
            return results, rejected
        table = pd.DataFrame(kept)
        results = [ImageResult(row=self._base_row(row, gray)) for row, gray in zip(kept, grays, strict=True)]
        lung_masks: dict[int, np.ndarray] = {}
        cxr = np.flatnonzero(table["modality"].to_numpy() == "cxr")
        if self._segment is not None and cxr.size:
            heads = self._segment(table.iloc[cxr], np.stack([preprocessed[i] for i in cxr]), self.models.segmentation)
            items = [
                (kept[i]["image_id"], grays[i], maps[..., self._mask_head(kept[i])], maps[..., DEFAULT_HEAD],
                 raw_files[kept[i]["mask_key"]] if kept[i].get("mask_key") else None)
                for i, maps in zip(cxr, heads, strict=True)
            ]
            for index, outputs in zip(cxr, self._map(partial(segmentation_outputs, post=self._post), items), strict=True):
                result = results[index]
                result.row |= outputs.row
                result.files |= outputs.files
                result.overlay = outputs.overlay
                if outputs.crop_mask is not None:
                    lung_masks[index] = outputs.crop_mask
        for model, classify, variant in self._classifiers:
            self._classification_outputs(model, classify, variant, table, results, preprocessed, lung_masks)
        for result, gray in zip(results, grays, strict=True):
            overlay, result.overlay = result.overlay, None  # only the thumbnail outlives the batch
            if self.settings.thumbnail_size:
                shown = overlay if overlay is not None else cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
                result.thumbnail = thumbnail_data_uri(shown, self.settings.thumbnail_size)
        return results, rejected

    def _mask_head(self, row: Mapping[str, Any]) -> int:
        """The head that draws this image's mask (see ``InferenceSettings.mask_convention``)."""
        convention = self.settings.mask_convention or self.settings.source_conventions.get(str(row.get("source", "")))
        return head_index(self._heads, convention)

    def _base_row(self, row: Mapping[str, Any], gray: np.ndarray) -> dict[str, Any]:
        return {
            "image_id": row["image_id"], "image_key": row["image_key"], "source": row.get("source", ""),
            "task": row.get("task", ""), "modality": row["modality"], "label": row.get("label", ""),
            "group_id": row.get("group_id", ""),  # patient / scan (ingestion): the external metrics resample it
            "width": int(gray.shape[1]), "height": int(gray.shape[0]),
        }

    def _classification_outputs(self, model: LoadedModel, classify: Callable[..., np.ndarray], variant: str,
                                table: pd.DataFrame, results: list[ImageResult], preprocessed: Sequence[np.ndarray],
                                lung_masks: Mapping[int, np.ndarray]) -> None:
        name = model.spec.name
        size, channels = _model_size(model.model)
        lung = self.settings.lung_masking
        minimum = float(lung.get("min_lung_area_fraction", 0.0))
        indices, images = [], []
        for index in np.flatnonzero(table["modality"].to_numpy() == model.spec.modality):
            if variant == "whole":
                image = preprocessed[index]
            else:
                mask = lung_masks.get(index)
                fraction = lung_area_fraction(mask) if mask is not None else 0.0
                if mask is None or fraction < minimum or not mask.any():
                    results[index].row[f"{name}.status"] = (
                        f"skipped: predicted lung area {fraction:.1%} < {minimum:.1%} (lung_masking.min_lung_area_fraction)"
                    )
                    continue
                if variant == "lungs":
                    image = apply_lung_mask(preprocessed[index], mask, crop_to_bbox=bool(lung["crop_to_bbox"]),
                                            margin_px=int(lung["margin_px"]), output_size=preprocessed[index].shape[0])
                else:  # lungless: the shortcut-audit input
                    image = black_out_lungs(preprocessed[index], mask)
            indices.append(index)
            images.append(image)
        if not indices:
            return
        batch = np.stack([classifier_input(image, size, channels) for image in images])
        probabilities = classify(table.iloc[indices], batch, model)
        heatmaps = self._gradcam(model, batch) if self.settings.gradcam else None
        classes = model.spec.classes
        for position, index in enumerate(indices):
            probability = probabilities[position]
            result = results[index]
            result.probabilities[model.namespace] = probability
            result.row |= {
                f"{name}.status": "ok", f"{name}.input": variant,
                f"{name}.prediction": classes[int(np.argmax(probability))],
                f"{name}.probability": float(np.max(probability)),
                **{f"{name}.p_{cls}": float(p) for cls, p in zip(classes, probability, strict=True)},
            }
            if heatmaps is not None and self.settings.write_files:
                from covid_imaging.classification.gradcam import overlay_heatmap  # noqa: PLC0415

                rgb = overlay_heatmap(images[position], heatmaps[position], alpha=self.settings.gradcam_alpha)
                path = f"gradcam/{name}/{result.row['image_id']}.png"
                result.files[path] = encode_png_any(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                result.row[f"{name}.gradcam_file"] = path

    def _gradcam(self, model: LoadedModel, batch: np.ndarray) -> np.ndarray | None:
        from covid_imaging.classification.gradcam import grad_cam  # noqa: PLC0415

        try:
            return grad_cam(model.model, batch)
        except Exception as error:  # an architecture without a usable conv layer: no heatmap, same run
            logger.warning("Grad-CAM unavailable for %s: %s", model.namespace, error)
            return None

