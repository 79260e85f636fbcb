"""Inference nodes: list and validate new images (ingestion's rules), then apply the models.

``predict_images`` returns the run folder's contents lazily: one entry per batch of
images (processed when the run folder dataset writes it, so the pixels in memory are
one batch's), then the tables and the report, written batch by batch from what each
batch left in a spool on disk (rows, probabilities, thumbnails): memory does not grow
with the number of images. The files land in ``<inference.output>/<timestamp>/`` only
when all are written (:class:`covid_imaging.datasets.run_folder.RunFolderDataset`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
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
    predictions_columns,
    qc_counts,
)
from covid_imaging.inference.report import report_pieces
from covid_imaging.pipelines.ingestion.nodes import REJECTED_COLUMNS, IngestionError, build_manifest
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


def build_inference_manifest(raw_files: Loaders, params: dict[str, Any],
                             compute: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The images of the source with ingestion's validation: bad files are listed, the run goes on."""
    try:
        return build_manifest(raw_files, ingestion_params(resolve_inference_params(params)), compute)
    except IngestionError as error:  # ingestion's hints name the training settings
        raise IngestionError(
            f"{error} For inference, the folder is inference.source and its layout inference.layout "
            "(kedro run --pipeline=inference --params=inference.source=<folder>,inference.layout=<layout>)."
        ) from None


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
              segmentation: Mapping[str, Any], segmentation_data: Mapping[str, Any],
              compute: Mapping[str, Any] | None = None) -> InferenceSettings:
    name = params["segmentation_model"]
    postprocessing = (segmentation.get(name) or {}).get("postprocessing", {}) if name else {}
    return InferenceSettings(
        preprocessing=preprocessing, segmentation_postprocessing=postprocessing, lung_masking=lung_masking,
        qc=params["qc"], gradcam=bool(params["gradcam"]["enabled"]), gradcam_alpha=float(params["gradcam"]["alpha"]),
        contour_thickness=int(params["overlay"]["contour_thickness"]),
        thumbnail_size=int(params["report"]["thumbnail_size"]), compute=dict(compute or {}),
        mask_convention=params["mask_convention"],
        source_conventions=dict(segmentation_data.get("mask_conventions") or {}),
    )


class SpooledRun:
    """Processes the manifest batch by batch, in order, as the run folder asks for it.

    What the table and the report need of each image (its row, class probabilities and
    thumbnail, a few KiB) goes to a spool on disk, one pickle per batch, and is read back
    one batch at a time: memory stays one batch's whatever the number of images (plus
    the counts and, for external metrics, a few values per image with a mask or label).
    The spool is a temporary folder (``TMPDIR``), removed when the run is written or dropped.
    """

    def __init__(self, manifest: pd.DataFrame, raw_files: Loaders, engine: InferenceEngine, batch_size: int) -> None:
        self.manifest, self.raw_files, self.engine = manifest, raw_files, engine
        self.starts = list(range(0, len(manifest), batch_size))
        self.batch_size = batch_size
        self.done = 0
        self.n_images = 0
        self.columns: dict[str, None] = {}  # every row's columns, in order of first appearance
        self.rejected: list[dict[str, str]] = []
        # What the summaries need, gathered as each batch is made (the spool is then read
        # back only for the table and the report): counts, and the few values per image
        # of the images that carry a mask or a label.
        models = engine.models
        self.predicted = {ns: Counter(counts) for ns, counts in class_counts(pd.DataFrame(), models).items()}
        self.flagged = Counter(qc_counts(pd.DataFrame()))
        self.scored: list[pd.DataFrame] = []  # image_id, source, Dice and IoU of images with a mask
        self.labelled: list[ImageResult] = []  # label, source, file and probabilities of labelled images
        self._classifiers = models.classifiers
        self.spool = tempfile.mkdtemp(prefix="covid-imaging-inference-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.spool, True)

    def batch_files(self, index: int) -> dict[str, bytes]:
        if index != self.done:
            raise RuntimeError(f"batch {index} requested before batch {self.done}")
        start = self.starts[index]
        results, rejected = self.engine.process(self.manifest.iloc[start : start + self.batch_size], self.raw_files)
        self.rejected.extend(rejected)
        files: dict[str, bytes] = {}
        for result in results:
            files.update(result.files)
            result.files = {}  # written: only the row, probabilities and thumbnail stay
            self.columns.update(dict.fromkeys(result.row))
        self._summarise(results)
        with open(self._chunk_path(index), "wb") as handle:
            pickle.dump(results, handle, protocol=pickle.HIGHEST_PROTOCOL)
        self.done += 1
        self.n_images += len(results)
        logger.info("Inference: %d / %d images", min(start + self.batch_size, len(self.manifest)), len(self.manifest))
        return files

    def _summarise(self, results: list[ImageResult]) -> None:
        rows = pd.DataFrame([r.row for r in results])
        for namespace, counts in class_counts(rows, self.engine.models).items():
            self.predicted[namespace].update(counts)
        self.flagged.update(qc_counts(rows))
        if "dice_native" in rows.columns:
            self.scored.append(rows.loc[rows["dice_native"].notna(), ["image_id", "source", "dice_native", "iou_native"]])
        self.labelled += [
            # group_id: ingestion's patient (patient_metadata, else the file-name rules),
            # which the external metrics' bootstrap resamples
            ImageResult(row={"label": r.row.get("label"), "source": r.row.get("source", ""),
                             "image_key": r.row["image_key"], "group_id": r.row.get("group_id", "")},
                        probabilities=r.probabilities)
            for r in results if r.probabilities and self._labelled(str(r.row.get("label")))
        ]

    def _labelled(self, label: str) -> bool:
        """A label that some classifier scores (one of its classes, or grouped into one)."""
        return any(model.spec.class_of(label) is not None for model in self._classifiers)

    def _chunk_path(self, index: int) -> str:
        return os.path.join(self.spool, f"{index:06d}.pickle")

    def finish(self) -> None:
        while self.done < len(self.starts):
            self.batch_files(self.done)

    def chunks(self) -> Iterator[list[ImageResult]]:
        """Each batch's results (rows, probabilities, thumbnails), one batch in memory at a time."""
        self.finish()
        for index in range(len(self.starts)):
            with open(self._chunk_path(index), "rb") as handle:
                yield pickle.load(handle)

    def predictions_columns(self) -> list[str]:
        return predictions_columns(self.columns)

    def prediction_chunks(self) -> Iterator[tuple[pd.DataFrame, dict[str, str]]]:
        """Each batch's predictions rows (every column of the run) and thumbnails by image id."""
        columns = self.predictions_columns()
        for results in self.chunks():
            rows = pd.DataFrame([r.row for r in results]).reindex(columns=columns)
            yield rows, {str(r.row["image_id"]): r.thumbnail for r in results}

    def close(self) -> None:
        self._cleanup()


def run_folder_contents(
    run: SpooledRun, rejected_files: pd.DataFrame, models: InferenceModels, params: Mapping[str, Any]
) -> dict[str, Any]:
    """The run folder's entries, each made when written: the batches' image files, then
    ``predictions.csv``, ``rejected_files.csv``, the external metrics, ``models.json`` and
    ``report.html``; the table and the report are written batch by batch from the spool."""
    evaluation = params["evaluation"]

    def rejected() -> pd.DataFrame:
        run.finish()
        return pd.concat([rejected_files, pd.DataFrame(run.rejected, columns=REJECTED_COLUMNS)], ignore_index=True)

    def predictions_csv() -> Iterator[str]:
        for index, (rows, _) in enumerate(run.prediction_chunks()):
            yield rows.to_csv(index=False, header=index == 0)
        if not run.starts:
            yield pd.DataFrame(columns=run.predictions_columns()).to_csv(index=False)

    def external() -> dict[str, bytes]:
        run.finish()
        files = {}
        segmentation_tables = external_segmentation_tables(pd.concat(run.scored, ignore_index=True)) if run.scored else None
        if segmentation_tables is not None:
            per_image, summary = segmentation_tables
            files["external_segmentation_metrics.csv"] = summary.to_csv(index=False).encode("utf-8")
            files["external_segmentation_per_image.csv"] = per_image.to_csv(index=False).encode("utf-8")
        classification = external_classification_table(
            run.labelled, models, int(evaluation["n_bootstrap"]), float(evaluation["confidence"]), int(evaluation["seed"])
        )
        if classification is not None:
            files["external_classification_metrics.csv"] = classification.to_csv(index=False).encode("utf-8")
        return files

    def models_json() -> str:
        return json.dumps({"models": models.versions(), "source": params["source"], "layout": params["layout"]}, indent=2)

    def report_html() -> Iterator[str]:
        yield from report_pieces(
            run.prediction_chunks(), run.predictions_columns(), run.n_images, models.versions(),
            {ns: dict(counts) for ns, counts in run.predicted.items()}, dict(run.flagged), rejected(),
            [m.spec.name for m in models.classifiers], str(params["source"]), str(params["report"]["title"]),
        )
        run.close()

    contents: dict[str, Any] = {f"batch {i:06d}": (lambda i=i: run.batch_files(i)) for i in range(len(run.starts))}
    contents |= {"predictions.csv": predictions_csv, "rejected_files.csv": lambda: rejected().to_csv(index=False),
                 "external metrics": external, "models.json": models_json, "report.html": report_html}
    return contents


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
    compute: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run folder's contents: per image the native-size lung mask, the overlay and the
    Grad-CAM overlays; ``predictions.csv``, ``rejected_files.csv``, ``models.json``, the
    external metrics when the source has masks or labels, and ``report.html``."""
    params = resolve_inference_params(params)
    models = select_models(model_store, params)
    settings = _settings(params, preprocessing, lung_masking, segmentation, segmentation_data, compute)
    engine = InferenceEngine(models, settings)
    run = SpooledRun(manifest, raw_files, engine, int(params["batch_size"]))
    return run_folder_contents(run, rejected_files, models, params)


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
