"""Inference nodes: list and validate new images (ingestion's rules), then apply the models.

``predict_images`` returns the run folder's contents lazily: one entry per batch of
images (processed when the run folder dataset writes it, so the pixels in memory are
one batch's), then the tables and the report, which are built from the rows and
thumbnails the batches left behind (about 10 KiB per image). The files land in ``<inference.output>/<timestamp>/`` only when all are
written (:class:`covid_imaging.datasets.run_folder.RunFolderDataset`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from covid_imaging.inference.engine import (
    ImageResult,
    InferenceEngine,
    InferenceModels,
    InferenceSettings,
    resolve_qc_params,
)
from covid_imaging.inference.models import ModelStore
from covid_imaging.inference.outputs import (
    class_counts,
    external_classification_table,
    external_segmentation_tables,
    predictions_table,
    qc_counts,
)
from covid_imaging.inference.report import render_report
from covid_imaging.pipelines.ingestion.nodes import REJECTED_COLUMNS, build_manifest
from covid_imaging.registry import load_registry
from covid_imaging.segmentation._params import merge_params

logger = logging.getLogger(__name__)
Loaders = Mapping[str, Callable[[], bytes]]

DEFAULT_INFERENCE_PARAMS: dict[str, Any] = {
    "source": "",
    "layout": "folder",  # any ingestion layout; folder: every image under the source, recursively
    "task": "cxr",  # manifest task (modality) of layouts that do not carry one
    "source_name": "new_images",  # the ``source`` column of layouts that do not carry one
    "label": "unlabelled",
    "output": "data/07_model_output/inference",
    "ingestion": {},  # further ingestion parameters (manifest_file, parts, max_pixels, n_workers, ...)
    "segmentation_model": "unet",  # a registered segmentation model, or null for none
    # The head drawing the masks of a model with one per convention; null: each image's
    # source's convention (segmentation_data.mask_conventions), else the model's default head.
    "mask_convention": None,
    "classifiers": [],  # registered classifiers: X-ray (classification.*) or CT (ct_classification.*) names
    "versions": {},  # namespace -> catalog version (default: the latest)
    "mlflow_models": {},  # namespace -> MLflow model URI (runs:/..., models:/...), instead of the catalog
    "batch_size": 16,
    "n_workers": 0,  # threads decoding and post-processing a batch's images (0: one per CPU)
    "qc": {},
    "gradcam": {"enabled": True, "alpha": 0.4},
    "overlay": {"contour_thickness": 2},
    "report": {"thumbnail_size": 160, "title": "covid-imaging inference report"},
    "evaluation": {"n_bootstrap": 500, "confidence": 0.95, "seed": 0},
}
_FREE_FORM = ("ingestion", "versions", "mlflow_models", "qc")


def resolve_inference_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge over the defaults; unknown keys raise (free-form blocks are checked on their own)."""
    params = dict(params or {})
    free = {key: params.pop(key) or {} for key in _FREE_FORM if key in params}
    resolved = merge_params({k: v for k, v in DEFAULT_INFERENCE_PARAMS.items() if k not in _FREE_FORM}, params,
                            where="inference")
    for key in _FREE_FORM:
        value = free.get(key, {})
        if not isinstance(value, Mapping):
            raise ValueError(f"inference.{key} must be a mapping, got {value!r}")
        resolved[key] = dict(value)
    for key in ("versions", "mlflow_models"):
        resolved[key] = _flatten(resolved[key])
    resolved["qc"] = resolve_qc_params(resolved["qc"])
    if int(resolved["batch_size"]) < 1:
        raise ValueError(f"inference.batch_size must be >= 1, got {resolved['batch_size']!r}")
    if not isinstance(resolved["classifiers"], list | tuple):
        raise ValueError(f"inference.classifiers must be a list of registered classifier names, got {resolved['classifiers']!r}")
    return resolved


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{segmentation: {unet: v}}`` (what ``--params=inference.versions.segmentation.unet=v``
    gives) as ``{segmentation.unet: v}``."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        flat |= _flatten(value, f"{name}.") if isinstance(value, Mapping) else {name: str(value)}
    return flat


def ingestion_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ingestion parameters for the inference source: masks optional, no task needs one."""
    return {
        "raw_location": params["source"], "layout": params["layout"], "task": params["task"],
        "source": params["source_name"], "label": params["label"], "tasks_requiring_masks": [],
        **params["ingestion"],
    }


def build_inference_manifest(raw_files: Loaders, params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images of the source with ingestion's validation: bad files are listed, the run goes on."""
    return build_manifest(raw_files, ingestion_params(resolve_inference_params(params)))


def select_models(model_store: ModelStore, params: Mapping[str, Any]) -> InferenceModels:
    """The segmentation model and classifiers named by the parameters, at their chosen versions."""
    registry = load_registry()
    segmentation = None
    chosen = []
    if params["segmentation_model"]:
        chosen.append(registry.get("segmentation", str(params["segmentation_model"])))
    for name in params["classifiers"]:
        matches = [spec for family in ("cxr_classification", "ct_classification")
                   for spec in registry.models(family) if spec.name == name or spec.namespace == name]
        if len(matches) != 1:
            known = [s.namespace for f in ("cxr_classification", "ct_classification") for s in registry.models(f)]
            raise ValueError(f"inference.classifiers: {name!r} is not one registered classifier; known: {known}")
        chosen.append(matches[0])
    namespaces = {spec.namespace for spec in chosen}
    for key in ("versions", "mlflow_models"):
        unknown = sorted(set(params[key]) - namespaces)
        if unknown:
            raise ValueError(f"inference.{key} names {unknown}, which are not selected models {sorted(namespaces)}")
    loaded = [model_store.load(spec, params["versions"].get(spec.namespace), params["mlflow_models"].get(spec.namespace))
              for spec in chosen]
    if params["segmentation_model"]:
        segmentation, loaded = loaded[0], loaded[1:]
    return InferenceModels(segmentation, tuple(loaded))


def _settings(params: Mapping[str, Any], preprocessing: Mapping[str, Any], lung_masking: Mapping[str, Any],
              segmentation: Mapping[str, Any], segmentation_data: Mapping[str, Any]) -> InferenceSettings:
    name = params["segmentation_model"]
    postprocessing = (segmentation.get(name) or {}).get("postprocessing", {}) if name else {}
    return InferenceSettings(
        preprocessing=preprocessing, segmentation_postprocessing=postprocessing, lung_masking=lung_masking,
        qc=params["qc"], gradcam=bool(params["gradcam"]["enabled"]), gradcam_alpha=float(params["gradcam"]["alpha"]),
        contour_thickness=int(params["overlay"]["contour_thickness"]),
        thumbnail_size=int(params["report"]["thumbnail_size"]), n_workers=int(params["n_workers"]),
        mask_convention=params["mask_convention"],
        source_conventions=dict(segmentation_data.get("mask_conventions") or {}),
    )


class _LazyRun:
    """Processes the manifest batch by batch, in order, as the run folder asks for it."""

    def __init__(self, manifest: pd.DataFrame, raw_files: Loaders, engine: InferenceEngine, batch_size: int) -> None:
        self.manifest, self.raw_files, self.engine = manifest, raw_files, engine
        self.starts = list(range(0, len(manifest), batch_size))
        self.batch_size = batch_size
        self.done = 0
        self.results: list[ImageResult] = []
        self.rejected: list[dict[str, str]] = []

    def batch_files(self, index: int) -> dict[str, bytes]:
        if index != self.done:
            raise RuntimeError(f"batch {index} requested before batch {self.done}")
        start = self.starts[index]
        results, rejected = self.engine.process(self.manifest.iloc[start : start + self.batch_size], self.raw_files)
        self.done += 1
        self.rejected.extend(rejected)
        files: dict[str, bytes] = {}
        for result in results:
            files.update(result.files)
            result.files = {}  # written: only the row, probabilities and thumbnail stay
        self.results.extend(results)
        logger.info("Inference: %d / %d images", min(start + self.batch_size, len(self.manifest)), len(self.manifest))
        return files

    def finish(self) -> None:
        while self.done < len(self.starts):
            self.batch_files(self.done)


def predict_images(
    manifest: pd.DataFrame,
    rejected_files: pd.DataFrame,
    raw_files: Loaders,
    model_store: ModelStore,
    params: dict[str, Any],
    preprocessing: dict[str, Any],
    lung_masking: dict[str, Any],
    segmentation: dict[str, Any],
    segmentation_data: dict[str, Any],
) -> dict[str, Any]:
    """The run folder's contents: per image the native-size lung mask, the overlay and the
    Grad-CAM overlays; ``predictions.csv``, ``rejected_files.csv``, ``models.json``, the
    external metrics when the source has masks or labels, and ``report.html``."""
    params = resolve_inference_params(params)
    models = select_models(model_store, params)
    engine = InferenceEngine(models, _settings(params, preprocessing, lung_masking, segmentation, segmentation_data))
    run = _LazyRun(manifest, raw_files, engine, int(params["batch_size"]))
    evaluation = params["evaluation"]
    state: dict[str, Any] = {}

    def tables() -> dict[str, Any]:
        if not state:
            run.finish()
            state["predictions"] = predictions_table([r.row for r in run.results])
            state["rejected"] = pd.concat([rejected_files, pd.DataFrame(run.rejected, columns=REJECTED_COLUMNS)],
                                          ignore_index=True)
        return state

    def predictions_csv() -> bytes:
        return tables()["predictions"].to_csv(index=False).encode("utf-8")

    def rejected_csv() -> bytes:
        return tables()["rejected"].to_csv(index=False).encode("utf-8")

    def external() -> dict[str, bytes]:
        files = {}
        segmentation_tables = external_segmentation_tables(tables()["predictions"])
        if segmentation_tables is not None:
            per_image, summary = segmentation_tables
            files["external_segmentation_metrics.csv"] = summary.to_csv(index=False).encode("utf-8")
            files["external_segmentation_per_image.csv"] = per_image.to_csv(index=False).encode("utf-8")
        classification = external_classification_table(
            run.results, models, int(evaluation["n_bootstrap"]), float(evaluation["confidence"]), int(evaluation["seed"])
        )
        if classification is not None:
            files["external_classification_metrics.csv"] = classification.to_csv(index=False).encode("utf-8")
        return files

    def models_json() -> str:
        return json.dumps({"models": models.versions(), "source": params["source"], "layout": params["layout"]}, indent=2)

    def report_html() -> str:
        predictions = tables()["predictions"]
        return render_report(
            predictions, {str(r.row["image_id"]): r.thumbnail for r in run.results}, models.versions(),
            class_counts(predictions, models), qc_counts(predictions), tables()["rejected"],
            [m.spec.name for m in models.classifiers], str(params["source"]), str(params["report"]["title"]),
        )

    contents: dict[str, Any] = {f"batch {i:06d}": (lambda i=i: run.batch_files(i)) for i in range(len(run.starts))}
    contents |= {"predictions.csv": predictions_csv, "rejected_files.csv": rejected_csv, "external metrics": external,
                 "models.json": models_json, "report.html": report_html}
    return contents


def log_inference_pyfunc(
    model_store: ModelStore,
    params: dict[str, Any],
    preprocessing: dict[str, Any],
    lung_masking: dict[str, Any],
    segmentation: dict[str, Any],
    segmentation_data: dict[str, Any],
) -> dict[str, Any]:
    """Log the selected models with their pre- and post-processing as one MLflow pyfunc model
    (in kedro-mlflow's run of this ``kedro run``); returns its URI and the models' versions."""
    import mlflow  # noqa: PLC0415

    from covid_imaging.inference.pyfunc import log_inference_model  # noqa: PLC0415

    params = resolve_inference_params(params)
    models = select_models(model_store, params)
    info = log_inference_model(models, _settings(params, preprocessing, lung_masking, segmentation, segmentation_data),
                               task=str(params["task"]), batch_size=int(params["batch_size"]))
    run = mlflow.active_run()
    logger.info("Inference model logged: %s (load with mlflow.pyfunc.load_model)", info.model_uri)
    return {"model_uri": info.model_uri, "run_id": run.info.run_id if run else info.run_id, "models": models.versions()}
