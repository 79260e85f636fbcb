"""Chest X-ray classification nodes: lung masking, training, evaluation, Grad-CAM, audit."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import cv2
import keras
import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from covid_imaging.classification.evaluation import (
    classification_report_table,
    macro_metrics_from_table,
    paired_metric_difference,
    plot_confusion_matrix,
    plot_roc_curves,
)
from covid_imaging.classification.gradcam import grad_cam, heatmap_mass_inside_mask, overlay_heatmap
from covid_imaging.classification.masking import (
    apply_lung_mask,
    black_out_lungs,
    lung_area_fraction,
    lung_mask_at,
)
from covid_imaging.classification.models import build_classifier
from covid_imaging.classification.shortcut import shortcut_audit_summary
from covid_imaging.classification.training import (
    fine_tune_two_phase,
    make_classification_dataset,
    train_classifier,
    undersample_indices,
)
from covid_imaging.classification.transfer import transfer_weights
from covid_imaging.compute import ComputeConfig, LazyResults, ordered_map
from covid_imaging.imaging.io import binary_mask, decode_gray, encode_png
from covid_imaging.params import merge_params
from covid_imaging.registry import (
    MODALITIES,
    ModalityError,
    check_modality,
    label_classes,
    modality_of_task,
    with_modality,
)
from covid_imaging.segmentation.conventions import DEFAULT_HEAD
from covid_imaging.segmentation.plots import plot_training_curves
from covid_imaging.training import as_float32, device_settings, seed_everything, training_device
from covid_imaging.training.inputs import resize_to_model_input

matplotlib.use("Agg")
logger = logging.getLogger(__name__)

Loaders = dict[str, Callable[[], bytes]]
IMAGE_VARIANTS = {"lungs": "lungs_path", "whole": "image_path", "lungless": "lungless_path"}
NON_BUILDER_MODEL_KEYS = ("builder", "strategy", "unfreeze_last_n", "transfer_from", "audit_of", "compare_with")
# Every key of a model's evaluation block (checked: a typo fails with its name).
EVALUATION_DEFAULTS: dict[str, Any] = {
    "n_bootstrap": 500,  # bootstrap resamples for the 95% CIs
    # group: resample whole patients / scans (group_id; a cluster bootstrap: slices of one
    # CT scan are not independent); image: every image on its own
    "bootstrap_unit": "group",
    "n_seeds": 1,        # trainings with seeds data.seed + 0..n-1: test balanced accuracy mean +- std
    # which of them is the model: the highest validation balanced accuracy (validation), or
    # the one with seed data.seed (first)
    "select_seed": "validation",
}
LEARNING_CURVES = (("loss", "Loss"), ("balanced_accuracy", "Balanced accuracy"))
# A classifier's data block (classification.<name>.data, ct_classification.<name>.data).
# image_size and classes have no default: the registry requires them in every block.
CLASSIFICATION_DATA_DEFAULTS: dict[str, Any] = {
    "image_size": None,
    "classes": None,
    "batch_size": 20,
    "seed": 42,
    "augment": True,               # flip and small rotations of the training images
    "image_variant": "auto",       # auto | lungs | whole | lungless (registry: per family)
    "cross_validation": False,     # k-fold CV over train+validation first (k = splits.n_folds)
    "undersample": True,           # train on the undersampled training split; false: every image
    "class_groups": None,          # {class: [manifest labels]}: classes made of several labels
}


# ------------------------------------------------------------------ lung masking


def select_classification_images(
    model_input_table: pd.DataFrame, params: dict[str, Any], modality: str = "cxr"
) -> pd.DataFrame:
    """Rows of the manifest tasks used for classification (``classification_data.tasks``),
    with their ``modality`` column. Every configured task must be of ``modality`` (chest
    X-ray by default): listing a CT task for the X-ray classifiers is an error, never a
    silent merge of CT ``covid`` slices into the X-ray ``covid`` class."""
    other = {task: modality_of_task(task) for task in params["tasks"] if modality_of_task(task) != modality}
    if other:
        raise ModalityError(
            f"classification_data.tasks lists {other}, but these classifiers take {modality} images only"
        )
    table = model_input_table[model_input_table["task"].isin(params["tasks"])].reset_index(drop=True)
    if table.empty:
        raise ValueError(f"No images of tasks {params['tasks']} for classification; check classification_data.tasks")
    return check_modality(with_modality(table), modality, "select_classification_images")


class ModalityGuarded:
    """A node function that refuses a table holding images of another modality.

    ``ModalityGuarded(train_classification_model, "cxr")`` behaves like the function
    (same name and signature, so Kedro binds its inputs the same way) but first checks
    that every row of its table argument (``inputs``) is of the model's modality; the
    classification pipelines wrap every per-model node with the modality of the model's
    registry family.
    """

    def __init__(self, func: Callable[..., Any], modality: str, argument: str = "inputs") -> None:
        if modality not in MODALITIES:
            raise ModalityError(f"Unknown modality {modality!r}; expected one of {MODALITIES}")
        signature = inspect.signature(func)
        if argument not in signature.parameters:
            raise TypeError(f"{func.__name__} has no argument {argument!r} to guard")
        self.func, self.modality, self.argument = func, modality, argument
        # name, doc, annotations and __wrapped__: Kedro's type extractor reads the hints through it
        functools.update_wrapper(self, func)
        self.__signature__ = signature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        table = self.__signature__.bind(*args, **kwargs).arguments[self.argument]
        check_modality(table, self.modality, f"{self.__name__} ({self.modality} model)")
        return self.func(*args, **kwargs)

    def __reduce__(self):  # picklable for parallel runners
        return (ModalityGuarded, (self.func, self.modality, self.argument))

    def __repr__(self) -> str:
        return f"ModalityGuarded({self.__name__}, {self.modality!r})"


def _lung_mask_task(task: tuple[tuple[int, int], np.ndarray], postprocessing: dict[str, Any]) -> np.ndarray:
    return lung_mask_at(*task, postprocessing)


def _predict_lung_masks(
    images: pd.DataFrame, preprocessed_images: Loaders, segmentation_model: keras.Model, params: dict[str, Any],
    compute: ComputeConfig | None = None,
) -> dict[str, np.ndarray]:
    """Post-processed lung masks (uint8 {0,1}, at the preprocessed size), batch by batch.

    The model predicts in this process; post-processing each map runs on the ``compute``
    backend while the next batches are predicted.
    """
    size = int(segmentation_model.input_shape[1])
    batch_size = int(params.get("batch_size", 16))
    image_ids = list(images["image_id"])

    def predicted():
        for start in range(0, len(image_ids), batch_size):
            batch_ids = image_ids[start : start + batch_size]
            grays = [decode_gray(preprocessed_images[f"images/{image_id}"]()) for image_id in batch_ids]
            batch = resize_to_model_input(np.stack(grays)[..., None], size)  # as the model was trained
            output = np.asarray(segmentation_model.predict_on_batch(batch))
            probabilities = output[..., DEFAULT_HEAD]  # the default mask-convention head
            for gray, probability_map in zip(grays, probabilities, strict=True):
                yield gray.shape, probability_map

    task = partial(_lung_mask_task, postprocessing=params["postprocessing"])
    return dict(zip(image_ids, ordered_map(task, predicted(), compute), strict=True))


def _call(task: Callable[[], bytes]) -> bytes:
    return task()


def _masked_variant(load: Callable[[], bytes], mask_png: bytes, variant: str, params: dict[str, Any]) -> bytes:
    gray = decode_gray(load())
    mask = decode_gray(mask_png)
    if variant == "lungs":
        return encode_png(
            apply_lung_mask(gray, mask, crop_to_bbox=bool(params["crop_to_bbox"]), margin_px=int(params["margin_px"]),
                            output_size=gray.shape[0])
        )
    if variant == "lungs_mask":  # the mask cropped like the lung image, for Grad-CAM
        return encode_png(
            binary_mask(apply_lung_mask(mask, mask, crop_to_bbox=bool(params["crop_to_bbox"]),
                                        margin_px=int(params["margin_px"]), output_size=gray.shape[0])).astype(np.uint8) * 255
        )
    return encode_png(black_out_lungs(gray, mask))


def mask_lungs(
    images: pd.DataFrame, preprocessed_images: Loaders, segmentation_model: keras.Model, params: dict[str, Any],
    compute: dict[str, Any] | None = None,
) -> tuple[LazyResults, pd.DataFrame]:
    """Segment the lungs of every classification image with the trained segmentation model.

    Returns lazily-written files (``masks/``, ``lungs/`` lung-only crops, ``lungs_mask/``,
    ``lungless/`` lungs blacked out, for the shortcut audit) and a report with each
    image's lung-area fraction; images under ``min_lung_area_fraction`` are excluded
    with the reason. Post-processing and the masked variants run on the ``compute``
    backend (all local cores by default); the files are the same whatever the backend.
    """
    config = ComputeConfig.from_params(compute)
    masks = _predict_lung_masks(images, preprocessed_images, segmentation_model, params, config)
    outputs: dict[str, Callable[[], bytes]] = {}
    rows = []
    minimum = float(params["min_lung_area_fraction"])
    for image_id, mask in masks.items():
        fraction = lung_area_fraction(mask)
        excluded = fraction < minimum
        rows.append(
            {"image_id": image_id, "lung_area_fraction": fraction, "excluded": excluded,
             "reason": f"predicted lung area {fraction:.1%} < {minimum:.1%}" if excluded else ""}
        )
        mask_png = encode_png(mask.astype(np.uint8) * 255)
        outputs[f"masks/{image_id}"] = partial(bytes, mask_png)
        if excluded:
            continue
        load = preprocessed_images[f"images/{image_id}"]
        for variant in ("lungs", "lungs_mask", "lungless"):
            outputs[f"{variant}/{image_id}"] = partial(_masked_variant, load, mask_png, variant, params)
    report = pd.DataFrame(rows, columns=["image_id", "lung_area_fraction", "excluded", "reason"])
    logger.info("Lung masking: %d images, %d excluded (lung area too small)", len(report), int(report["excluded"].sum()))
    return LazyResults(_call, outputs, config, what="lung masking (masks and masked variants)"), report


def build_classification_inputs(
    images: pd.DataFrame, lung_masking_report: pd.DataFrame, lung_masked_images: Loaders, params: dict[str, Any]
) -> pd.DataFrame:
    """Images with the paths of their lung-masked, lung-less and whole variants.

    ``default_variant`` is what classifiers with ``image_variant: auto`` train on: the
    lung-only crop (``lungs``) when ``lung_masking.enabled`` is true, else ``whole``.
    """
    root = params["output_root"].rstrip("/")
    table = images.merge(lung_masking_report, on="image_id", how="left")
    table = table[~table["excluded"].astype(bool)].reset_index(drop=True)
    for variant in ("lungs", "lungs_mask", "lungless", "masks"):
        table[f"{variant}_path"] = [f"{root}/{variant}/{image_id}.png" for image_id in table["image_id"]]
        missing = [i for i in table["image_id"] if f"{variant}/{i}" not in lung_masked_images]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {variant} images missing under {root}, e.g. {missing[:3]}")
    table["default_variant"] = "lungs" if params["enabled"] else "whole"
    return table


# ------------------------------------------------------------------ per-model template


def _relabelled(inputs: pd.DataFrame, data: dict[str, Any]) -> pd.DataFrame:
    """The table with manifest labels mapped to the model's classes by ``data.class_groups``
    (``{class: [manifest labels]}``, e.g. ``pneumonia: [bacterial, viral, pneumonia]``);
    the manifest label stays in ``manifest_label``. Without groups, labels are classes."""
    mapping = label_classes(data["classes"], data["class_groups"])
    if not mapping:
        return inputs
    return inputs.assign(manifest_label=inputs["label"], label=inputs["label"].map(lambda label: mapping.get(label, label)))


def _rows(inputs: pd.DataFrame, data: dict[str, Any], split: str) -> pd.DataFrame:
    inputs = _relabelled(inputs, data)
    rows = inputs[(inputs["split"] == split) & inputs["label"].isin(data["classes"])]
    if split == "train" and data["undersample"]:  # false: every training image (class_weight instead)
        rows = rows[rows["in_training_sample"].astype(str).str.lower() == "true"]
    if rows.empty:
        raise ValueError(f"No {split} images of classes {data['classes']}")
    return rows


def _variant(rows: pd.DataFrame, data: dict[str, Any]) -> str:
    """The image variant a model uses: its own setting, or the table's default for ``auto``."""
    variant = data["image_variant"]
    return str(rows["default_variant"].iloc[0]) if variant == "auto" else variant


def _image_paths(rows: pd.DataFrame, data: dict[str, Any]) -> pd.Series:
    return rows[IMAGE_VARIANTS[_variant(rows, data)]]


def _labels(rows: pd.DataFrame, data: dict[str, Any]) -> np.ndarray:
    return rows["label"].map({name: index for index, name in enumerate(data["classes"])}).to_numpy()


def _dataset(rows: pd.DataFrame, data: dict[str, Any], training: bool):
    labels = _labels(rows, data)
    return make_classification_dataset(
        _image_paths(rows, data), labels, image_size=int(data["image_size"]), batch_size=int(data["batch_size"]),
        shuffle=training, seed=int(data["seed"]), augment=training and bool(data["augment"]),
    )


def _build(model_params: dict[str, Any], data: dict[str, Any], training: dict[str, Any]) -> keras.Model:
    # Registry and strategy keys are not builder arguments (see covid_imaging.registry).
    options = {k: v for k, v in model_params.items() if k not in NON_BUILDER_MODEL_KEYS}
    if "freeze_base" in options:
        options["freeze_base"] = _strategy(model_params) == "two_phase"
    # The dtype policy and strategy hold while this model is built; layers keep them.
    with training_device(*device_settings(training)) as strategy, strategy.scope():
        return build_classifier(
            model_params["builder"], n_classes=len(data["classes"]), input_size=int(data["image_size"]), **options
        )


def _strategy(model_params: dict[str, Any]) -> str:
    """``auto``: the two-phase recipe needs pretrained weights; with random weights a frozen
    base would only give random features, so the whole network is trained instead."""
    strategy = model_params.get("strategy", "scratch")
    if strategy == "auto":
        return "two_phase" if model_params.get("weights") else "scratch"
    return strategy


def _fit(model, model_params, training, train_ds, validation_ds, train_labels=None):
    strategy = _strategy(model_params)
    if strategy == "scratch":
        return train_classifier(model, train_ds, validation_ds, training["main"], train_labels=train_labels)
    if strategy == "two_phase":
        return fine_tune_two_phase(
            model, train_ds, validation_ds, training["head"], training["fine_tune"],
            unfreeze=model_params.get("unfreeze_last_n", "all"), train_labels=train_labels,
        )
    raise ValueError(f"model.strategy must be 'scratch', 'two_phase' or 'transfer', got {strategy!r}")


def cross_validate(
    inputs: pd.DataFrame, model_params: dict[str, Any], training: dict[str, Any], data: dict[str, Any]
) -> dict[str, list[float]]:
    """k-fold cross-validation over train+validation (the ``cv_fold`` column of the split
    table, grouped by patient); the test split is never touched. One value per fold."""
    inputs = _relabelled(inputs, data)
    development = inputs[(inputs["split"] != "test") & inputs["label"].isin(data["classes"])]
    folds = sorted(int(fold) for fold in development["cv_fold"].unique() if int(fold) >= 0)
    if len(folds) < 2:
        raise ValueError("cross_validation needs splits.n_folds >= 2 (the cv_fold column is empty)")
    scores: dict[str, list[float]] = {"cv_fold_val_loss": [], "cv_fold_val_accuracy": []}
    for fold in folds:
        seed_everything(int(data["seed"]) + fold)
        fold_train = development[development["cv_fold"].astype(int) != fold]
        if data["undersample"]:  # as the final model's training split; the held-out fold keeps its prevalence
            fold_train = fold_train.iloc[undersample_indices(_labels(fold_train, data), int(data["seed"]) + fold)]
        fold_validation = development[development["cv_fold"].astype(int) == fold]
        model = _build(model_params, data, training)
        _, history = _fit(model, model_params, training, _dataset(fold_train, data, True),
                          _dataset(fold_validation, data, False), _labels(fold_train, data))
        best = int(np.nanargmin(history["val_loss"]))
        scores["cv_fold_val_loss"].append(history["val_loss"][best])
        scores["cv_fold_val_accuracy"].append(history["val_accuracy"][best])
        logger.info("CV fold %d/%d: val accuracy %.3f", fold + 1, len(folds), scores["cv_fold_val_accuracy"][-1])
    return scores


def train_classification_model(
    inputs: pd.DataFrame, model_params: dict[str, Any], training: dict[str, Any], data: dict[str, Any]
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Train one classifier on the training split (undersampled), validated on validation.

    With ``data.cross_validation: true`` it first runs k-fold cross-validation (the
    reference HRNet protocol); the per-fold scores join the history (MLflow step = fold).
    """
    cv_scores = cross_validate(inputs, model_params, training, data) if data["cross_validation"] else {}
    seed_everything(int(data["seed"]))
    train, validation = _rows(inputs, data, "train"), _rows(inputs, data, "validation")
    model = _build(model_params, data, training)
    logger.info("Training %s (%d parameters) on %d images of %s", model_params["builder"], model.count_params(),
                len(train), data["classes"])
    model, history = _fit(model, model_params, training, _dataset(train, data, True), _dataset(validation, data, False),
                          _labels(train, data))
    return as_float32(model), {**history, **cv_scores}


def transfer_and_fine_tune(
    inputs: pd.DataFrame, source_model: keras.Model, model_params: dict[str, Any], training: dict[str, Any],
    data: dict[str, Any],
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Transfer learning (model_2): copy the source model's weights except its head, train
    the new head with the rest frozen, then unfreeze everything and fine-tune at 1e-4."""
    if data["cross_validation"]:
        raise ValueError("data.cross_validation is not wired for transfer models (model.strategy: transfer); "
                         "set it to false for this model")
    seed_everything(int(data["seed"]))
    train, validation = _rows(inputs, data, "train"), _rows(inputs, data, "validation")
    model = _build(model_params, data, training)
    copied = transfer_weights(source_model, model)
    logger.info("Transferred %d layers from %s", len(copied), source_model.name)
    model, history = fine_tune_two_phase(
        model, _dataset(train, data, True), _dataset(validation, data, False), training["head"], training["fine_tune"],
        unfreeze="all", train_labels=_labels(train, data),
    )
    return as_float32(model), history


def _predict(model: keras.Model, rows: pd.DataFrame, data: dict[str, Any]) -> np.ndarray:
    dataset = make_classification_dataset(_image_paths(rows, data), None, image_size=int(data["image_size"]),
                                          batch_size=int(data["batch_size"]))
    return np.concatenate([np.asarray(model.predict_on_batch(batch)) for batch in dataset])


def split_balanced_accuracy(
    model: keras.Model, inputs: pd.DataFrame, data: dict[str, Any], split: str = "test"
) -> tuple[float, int]:
    """Balanced accuracy of ``model`` on one split of ``inputs`` (the model's classes and
    image variant), and that split's number of images."""
    rows = _rows(inputs, data, split)
    probabilities = _predict(model, rows, data)
    predictions = rows[["label"]].assign(**{f"p_{name}": probabilities[:, index]
                                            for index, name in enumerate(data["classes"])})
    return _balanced_accuracy(predictions, list(data["classes"])), len(rows)


def evaluate_classifier(
    model: keras.Model, inputs: pd.DataFrame, data: dict[str, Any], evaluation: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, float], Figure, Figure, pd.DataFrame]:
    """Test-split metrics per class, macro, overall and per source, with bootstrap 95% CIs."""
    test = _rows(inputs, data, "test")
    return evaluate_probabilities(test, _predict(model, test, data), data, evaluation)


def evaluate_probabilities(
    test: pd.DataFrame, probabilities: np.ndarray, data: dict[str, Any], evaluation: dict[str, Any]
) -> tuple[pd.DataFrame, dict[str, float], Figure, Figure, pd.DataFrame]:
    """:func:`evaluate_classifier` from the class probabilities of the ``test`` rows (one
    model's, or the out-of-fold ones of several): the report with bootstrap CIs (patients
    or scans resampled, ``evaluation.bootstrap_unit``), macro and per-source metrics,
    confusion matrix, ROC curves and the predictions table."""
    evaluation = _checked_evaluation(evaluation)
    y_true = test["label"].map({name: index for index, name in enumerate(data["classes"])}).to_numpy()
    report = classification_report_table(
        y_true, probabilities, data["classes"], groups=test["source"].to_numpy(),
        n_bootstrap=int(evaluation["n_bootstrap"]), seed=int(data["seed"]),
        clusters=test["group_id"].to_numpy() if evaluation["bootstrap_unit"] == "group" else None,
    )
    metrics = {f"test_{name}": value for name, value in macro_metrics_from_table(report).items()}
    for source in sorted(test["source"].unique()):
        macro = macro_metrics_from_table(report, scope=source)
        metrics[f"test_accuracy_{source}"] = macro["accuracy"]
        metrics[f"test_balanced_accuracy_{source}"] = macro["balanced_accuracy"]
    predictions = test[["image_id", "source", "label"] + (["manifest_label"] if "manifest_label" in test else [])].assign(
        predicted=[data["classes"][i] for i in probabilities.argmax(axis=1)],
        **{f"p_{name}": probabilities[:, i] for i, name in enumerate(data["classes"])},
    )
    confusion = plot_confusion_matrix(y_true, probabilities, data["classes"], normalize="true")
    roc = plot_roc_curves(y_true, probabilities, data["classes"])
    return report, metrics, confusion, roc, predictions


def explain_with_gradcam(
    model: keras.Model, inputs: pd.DataFrame, lung_masked_images: Loaders | None, data: dict[str, Any],
    gradcam: dict[str, Any],
) -> tuple[Figure, dict[str, float]]:
    """Grad-CAM overlays for a sample of test images per class, and the share of
    Grad-CAM mass inside the lung mask (mean over the sampled test images).

    ``lung_masked_images=None`` (images without lung masks, e.g. CT slices): overlays
    only, and the count of all-zero maps; no lung share is defined.
    """
    test = _rows(inputs, data, "test")
    sample = test.groupby("label", sort=True).head(int(gradcam["per_class"]))
    images = np.stack([
        resize_to_model_input(cv2.imread(path, cv2.IMREAD_GRAYSCALE)[..., None], int(data["image_size"])).numpy()
        for path in _image_paths(sample, data)
    ])  # as the classifier was trained
    heatmaps = grad_cam(model, images)
    all_zero = [not bool(np.any(np.asarray(heatmap) > 0)) for heatmap in heatmaps]
    shares: list[float] = []
    if lung_masked_images is not None:
        # Lung crops are compared with the mask cropped the same way; other variants with the full mask.
        mask_key = "lungs_mask" if _variant(sample, data) == "lungs" else "masks"
        for image_id, heatmap in zip(sample["image_id"], heatmaps, strict=True):
            mask = decode_gray(lung_masked_images[f"{mask_key}/{image_id}"]())
            mask = binary_mask(cv2.resize(mask, heatmap.shape[::-1], interpolation=cv2.INTER_NEAREST))
            shares.append(heatmap_mass_inside_mask(heatmap, mask))
    columns = max(1, len(sample))
    figure = Figure(figsize=(2.2 * columns, 2.6))
    for index, (image, heatmap, label) in enumerate(zip(images, heatmaps, sample["label"], strict=True)):
        axis = figure.add_subplot(1, columns, index + 1)
        axis.imshow(overlay_heatmap(image, heatmap))
        detail = f"in lungs {shares[index]:.0%}" if shares else ("no positive evidence" if all_zero[index] else "")
        axis.set_title(f"{label}\n{detail}", fontsize=8)
        axis.axis("off")
    figure.tight_layout()
    if lung_masked_images is None:
        return figure, {"gradcam_maps_all_zero": float(sum(all_zero))}
    # A Grad-CAM map can be all zero (no positive evidence for the class): no share then.
    defined = [share for share in shares if np.isfinite(share)]
    return figure, {
        "gradcam_lung_share_mean": float(np.mean(defined)) if defined else float("nan"),
        "gradcam_lung_share_std": float(np.std(defined)) if defined else float("nan"),
        "gradcam_maps_all_zero": float(len(shares) - len(defined)),
    }


def explain_with_gradcam_unmasked(
    model: keras.Model, inputs: pd.DataFrame, data: dict[str, Any], gradcam: dict[str, Any]
) -> tuple[Figure, dict[str, float]]:
    """:func:`explain_with_gradcam` for images without lung masks (CT slices)."""
    return explain_with_gradcam(model, inputs, None, data, gradcam)


def plot_learning_curves(training_history: dict[str, list[float]]) -> Figure:
    """Training and validation loss and balanced accuracy per epoch (both phases of a
    two-phase model in sequence)."""
    return plot_training_curves(training_history, curves=LEARNING_CURVES)


def checked_data(data: dict[str, Any], defaults: dict[str, Any] = CLASSIFICATION_DATA_DEFAULTS) -> dict[str, Any]:
    """A classifier's data block over ``defaults``: unknown keys (typos) fail with their name.

    The head node of every classifier template (``check_data`` for X-rays, the CT
    ``model_data``): the nodes downstream read every key of its output, no defaults of
    their own."""
    data = merge_params(defaults, data, where="data")
    missing = [key for key in ("image_size", "classes") if data[key] is None]
    if missing:
        raise ValueError(f"data.{missing[0]} must be set in the model's data block")
    return data


def _checked_evaluation(evaluation: dict[str, Any]) -> dict[str, Any]:
    evaluation = merge_params(EVALUATION_DEFAULTS, evaluation, where="evaluation")
    if int(evaluation["n_seeds"]) < 1:
        raise ValueError(f"evaluation.n_seeds must be >= 1, got {evaluation['n_seeds']}")
    if evaluation["bootstrap_unit"] not in ("group", "image"):
        raise ValueError(f"evaluation.bootstrap_unit must be 'group' or 'image', got {evaluation['bootstrap_unit']!r}")
    if evaluation["select_seed"] not in ("validation", "first"):
        raise ValueError(f"evaluation.select_seed must be 'validation' or 'first', got {evaluation['select_seed']!r}")
    return evaluation


def _train_over_seeds(
    train_once: Callable[[dict[str, Any]], tuple[keras.Model, dict[str, list[float]]]],
    inputs: pd.DataFrame, data: dict[str, Any], evaluation: dict[str, Any],
) -> tuple[keras.Model, dict[str, list[float]], pd.DataFrame]:
    """``train_once`` with seeds ``data.seed + 0 .. n_seeds - 1`` (same data and split: what
    changes is initialisation, shuffling, augmentation, dropout). Returns the selected
    seed's model and history, and every seed's class probabilities on the validation and
    test splits (the test split plays no part in the selection)."""
    evaluation = _checked_evaluation(evaluation)
    splits = {split: _rows(inputs, data, split) for split in ("validation", "test")}
    selected: tuple[keras.Model, dict[str, list[float]]] | None = None
    tables, cv_history = [], {}
    for offset in range(int(evaluation["n_seeds"])):
        seeded = {**data, "seed": int(data["seed"]) + offset}
        if offset:
            seeded["cross_validation"] = False  # the k-fold protocol runs once, with the first seed
        model, history = train_once(seeded)
        if not offset:  # the k-fold scores belong to the run, whichever seed is kept
            cv_history = {key: values for key, values in history.items() if key.startswith("cv_fold_")}
        for split, rows in splits.items():
            probabilities = _predict(model, rows, seeded)
            tables.append(rows[["image_id", "label"]].assign(
                split=split, seed=seeded["seed"],
                **{f"p_{name}": probabilities[:, index] for index, name in enumerate(data["classes"])},
            ))
        logger.info("Seed %d: validation balanced accuracy %.3f", seeded["seed"],
                    _balanced_accuracy(tables[-2], data["classes"]))
        # The rule of selected_seed over the seeds so far: only the kept model stays in memory.
        scores = seed_scores(pd.concat(tables, ignore_index=True), list(data["classes"]))
        if selected_seed(scores, evaluation["select_seed"]) == seeded["seed"]:
            selected = (model, history)
    assert selected is not None
    return selected[0], {**selected[1], **cv_history}, pd.concat(tables, ignore_index=True)


def _balanced_accuracy(predictions: pd.DataFrame, classes: list[str]) -> float:
    from sklearn.metrics import (
        balanced_accuracy_score,  # noqa: PLC0415 - scikit-learn is heavy to import
    )

    predicted = predictions[[f"p_{name}" for name in classes]].to_numpy().argmax(axis=1)
    return float(balanced_accuracy_score(predictions["label"].map(classes.index), predicted))


def train_over_seeds(
    inputs: pd.DataFrame, model_params: dict[str, Any], training: dict[str, Any], data: dict[str, Any],
    evaluation: dict[str, Any],
) -> tuple[keras.Model, dict[str, list[float]], pd.DataFrame]:
    """:func:`train_classification_model` over ``evaluation.n_seeds`` seeds; the model is
    the seed with the highest validation balanced accuracy (``select_seed: validation``) or
    the first seed's (``first``). Also returns every seed's validation and test probabilities.
    ``data`` is the checked block (:func:`checked_data`, the template's ``check_data`` node)."""
    return _train_over_seeds(lambda seeded: train_classification_model(inputs, model_params, training, seeded),
                             inputs, data, evaluation)


def transfer_over_seeds(
    inputs: pd.DataFrame, source_model: keras.Model, model_params: dict[str, Any], training: dict[str, Any],
    data: dict[str, Any], evaluation: dict[str, Any],
) -> tuple[keras.Model, dict[str, list[float]], pd.DataFrame]:
    """:func:`transfer_and_fine_tune` over seeds, as :func:`train_over_seeds`; every seed
    restarts from the same ``source_model``."""
    return _train_over_seeds(
        lambda seeded: transfer_and_fine_tune(inputs, source_model, model_params, training, seeded),
        inputs, data, evaluation,
    )


def seed_scores(seed_predictions: pd.DataFrame, classes: list[str]) -> dict[tuple[str, int], float]:
    """Balanced accuracy of every (split, seed) in a ``seed_predictions`` table."""
    return {(split, int(seed)): _balanced_accuracy(group, classes)
            for (split, seed), group in seed_predictions.groupby(["split", "seed"], sort=True)}


def selected_seed(scores: dict[tuple[str, int], float], select_seed: str) -> int:
    """The seed :func:`_train_over_seeds` keeps: the first with the highest validation
    balanced accuracy (``validation``) or the first seed (``first``)."""
    seeds = sorted({seed for _, seed in scores})
    if select_seed == "first":
        return seeds[0]
    return seeds[int(np.argmax([scores["validation", seed] for seed in seeds]))]


def summarise_seeds(seed_predictions: pd.DataFrame, data: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, float]:
    """Test balanced accuracy over the seeds: mean, (sample) standard deviation, each seed's
    value (``..._seed<k>``), each seed's validation balanced accuracy and the selected seed."""
    evaluation = _checked_evaluation(evaluation)
    scores = seed_scores(seed_predictions, list(data["classes"]))
    seeds = sorted({seed for _, seed in scores})
    test = [scores["test", seed] for seed in seeds]
    validation = [scores["validation", seed] for seed in seeds]
    result = {
        "n_seeds": float(len(seeds)),
        "selected_seed": float(selected_seed(scores, evaluation["select_seed"])),
        "test_balanced_accuracy_seed_mean": float(np.mean(test)),
        "test_balanced_accuracy_seed_std": float(np.std(test, ddof=1)) if len(seeds) > 1 else float("nan"),
    }
    result.update({f"test_balanced_accuracy_seed{seed}": value for seed, value in zip(seeds, test, strict=True)})
    result.update({f"validation_balanced_accuracy_seed{seed}": value
                   for seed, value in zip(seeds, validation, strict=True)})
    return result


# ------------------------------------------------------------------ across models


def audit_shortcuts(
    real_metrics: dict[str, float], lungless_metrics: dict[str, float], params: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Compare the real classifier with the same classifier trained without the lungs.

    The number of classes (chance level) is that of the audited model's ``data.classes``;
    ``params["n_classes"]`` is used only when no ``data`` is given.
    """
    n_classes = len(data["classes"]) if data is not None else int(params["n_classes"])
    summary = shortcut_audit_summary(
        {"accuracy": real_metrics["test_accuracy"], "balanced_accuracy": real_metrics["test_balanced_accuracy"]},
        {"accuracy": lungless_metrics["test_accuracy"], "balanced_accuracy": lungless_metrics["test_balanced_accuracy"]},
        n_classes=n_classes, chance_margin=float(params["chance_margin"]),
    )
    level = logging.WARNING if summary.get("lungless_above_chance") or not summary.get("meaningful", True) else logging.INFO
    logger.log(level, "Shortcut audit: %s", summary["verdict"])
    return summary


def compare_paired(
    predictions: pd.DataFrame, baseline_predictions: pd.DataFrame, seed_predictions: pd.DataFrame,
    baseline_seed_predictions: pd.DataFrame, inputs: pd.DataFrame, data: dict[str, Any], evaluation: dict[str, Any],
    model: str, baseline: str,
) -> dict[str, Any]:
    """A model against the model it is compared with (registry ``model.compare_with``) on
    the same test images: the difference in test balanced accuracy with a paired
    bootstrap 95 % CI (patients resampled with ``evaluation.bootstrap_unit: group``), the
    share of resamples in which the model is ahead, each common seed's difference (the
    k-th seed of one against the same seed of the other) and a verdict that says which
    side of 0 the interval lies on, if either."""
    evaluation = _checked_evaluation(evaluation)
    classes = list(data["classes"])
    merged = predictions.merge(baseline_predictions, on="image_id", suffixes=("", "_baseline"), validate="one_to_one")
    if not len(merged) == len(predictions) == len(baseline_predictions):
        raise ValueError(f"{model} and {baseline} were not tested on the same images "
                         f"({len(predictions)} and {len(baseline_predictions)}, {len(merged)} in common)")
    groups = inputs.drop_duplicates("image_id").set_index("image_id")["group_id"]
    clusters = merged["image_id"].map(groups).to_numpy() if evaluation["bootstrap_unit"] == "group" else None
    columns = [f"p_{name}" for name in classes]
    result: dict[str, Any] = {"model": model, "baseline": baseline, "metric": "test_balanced_accuracy",
                              "n_test": len(merged),
                              "n_clusters": int(pd.Series(clusters).nunique()) if clusters is not None else len(merged)}
    result |= paired_metric_difference(
        merged["label"].map(classes.index).to_numpy(), merged[columns].to_numpy(),
        merged[[f"{column}_baseline" for column in columns]].to_numpy(), len(classes),
        n_bootstrap=int(evaluation["n_bootstrap"]), seed=int(data["seed"]), clusters=clusters,
    )
    scores = {name: {seed: value for (split, seed), value in seed_scores(table, classes).items() if split == "test"}
              for name, table in (("model", seed_predictions), ("baseline", baseline_seed_predictions))}
    common = sorted(set(scores["model"]) & set(scores["baseline"]))
    differences = [scores["model"][seed] - scores["baseline"][seed] for seed in common]
    result |= {f"difference_seed{seed}": value for seed, value in zip(common, differences, strict=True)}
    if differences:
        result["seed_difference_mean"] = float(np.mean(differences))
        result["seeds_model_ahead"] = int(sum(value > 0 for value in differences))
    interval = f"{result['difference']:+.3f} [{result['ci_low']:+.3f}, {result['ci_high']:+.3f}]"
    if result["ci_low"] > 0:
        result["verdict"] = f"{model} is above {baseline}: {interval}"
    elif result["ci_high"] < 0:
        result["verdict"] = f"{model} is below {baseline}: {interval}"
    else:
        result["verdict"] = f"undecided: the 95 % interval of {model} - {baseline}, {interval}, includes 0"
    logger.info("Paired comparison: %s", result["verdict"])
    return result


def compare_classifiers(**metrics: dict[str, float]) -> pd.DataFrame:
    """One row per model: macro test metrics and Grad-CAM lung share."""
    rows: dict[str, dict[str, float]] = {}
    for key, values in metrics.items():
        model = key.rsplit("__", 1)[0]  # keys are <model>__test, <model>__gradcam and <model>__seeds
        rows.setdefault(model, {"model": model}).update(values)
    table = pd.DataFrame(list(rows.values()))
    logger.info("Classification comparison (test split):\n%s", table.to_string(index=False, float_format="%.3f"))
    return table
