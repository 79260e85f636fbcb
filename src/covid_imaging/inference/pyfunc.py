"""The inference as one MLflow model (pyfunc): image paths in, the predictions table out.

``mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image_path": [...]}))`` runs the
same :class:`~covid_imaging.inference.engine.InferenceEngine` as the ``inference``
pipeline (same preprocessing, post-processing, lung crop and QC flags) and returns the
rows of ``predictions.csv`` (no files are written; unreadable images get a row with an
``error``). The logged model carries the
Keras files, the settings as JSON and the ``covid_imaging`` package itself
(``code_paths``), so it needs only the project's dependencies to load.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path, PurePath
from typing import Any

import mlflow
import pandas as pd

from covid_imaging.inference.engine import InferenceEngine, InferenceModels, InferenceSettings
from covid_imaging.inference.models import LoadedModel, load_keras_file
from covid_imaging.inference.outputs import predictions_table
from covid_imaging.registry import ModelSpec

CONFIG_ARTIFACT = "inference_config"
INPUT_COLUMN = "image_path"


def _spec_to_json(spec: ModelSpec) -> dict[str, Any]:
    return {**dataclasses.asdict(spec), "classes": list(spec.classes)}


def _spec_from_json(data: dict[str, Any]) -> ModelSpec:
    return ModelSpec(**{**data, "classes": tuple(data["classes"])})


class InferencePyfunc(mlflow.pyfunc.PythonModel):
    """The lung segmentation model and classifiers with the project's pre- and post-processing."""

    def load_context(self, context: Any) -> None:
        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text(encoding="utf-8"))
        loaded = [
            LoadedModel(_spec_from_json(entry["spec"]), load_keras_file(context.artifacts[entry["artifact"]]), entry["version"])
            for entry in config["models"]
        ]
        segmentation = next((m for m in loaded if m.spec.purpose == "segmentation"), None)
        models = InferenceModels(segmentation, tuple(m for m in loaded if m is not segmentation))
        stored = dict(config["settings"])
        stored.pop("n_workers", None)  # models logged before inference ran on the compute map (d42773e)
        settings = InferenceSettings(**{**stored, "write_files": False, "thumbnail_size": 0, "gradcam": False})
        self.engine = InferenceEngine(models, settings)
        self.task = config["task"]
        self.batch_size = int(config["batch_size"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if INPUT_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs an {INPUT_COLUMN!r} column; got {list(model_input.columns)}")
        paths = [str(p) for p in model_input[INPUT_COLUMN]]
        tasks = model_input["task"].astype(str).tolist() if "task" in model_input.columns else [self.task] * len(paths)
        rows = pd.DataFrame({
            "image_id": [str(PurePath(p).with_suffix("")) for p in paths], "image_key": paths, "image_uri": paths,
            "task": tasks, "source": "", "label": "", "mask_key": "",
        })
        raw_files = {path: (lambda path=path: Path(path).read_bytes()) for path in paths}
        out: list[dict[str, Any]] = []
        for start in range(0, len(rows), self.batch_size):
            results, rejected = self.engine.process(rows.iloc[start : start + self.batch_size], raw_files)
            out += [r.row for r in results]
            out += [{"image_id": str(PurePath(r["image_key"]).with_suffix("")), "image_key": r["image_key"],
                     "error": r["reason"]} for r in rejected]
        order = {path: index for index, path in enumerate(paths)}
        table = predictions_table(sorted(out, key=lambda row: order[row["image_key"]]))
        return table.drop(columns=[c for c in ("source", "label") if c in table.columns])


def log_inference_model(models: InferenceModels, settings: InferenceSettings, task: str = "cxr",
                        batch_size: int = 16, name: str = "inference_model") -> Any:
    """Log the pyfunc into the active MLflow run (or a new one); returns MLflow's ``ModelInfo``."""
    import covid_imaging  # noqa: PLC0415

    chosen = ([models.segmentation] if models.segmentation else []) + list(models.classifiers)
    with tempfile.TemporaryDirectory(prefix="covid-imaging-pyfunc-") as folder:
        artifacts, entries = {}, []
        for index, model in enumerate(chosen):
            key = f"model_{index}_{model.spec.name}"
            path = Path(folder) / f"{key}.keras"
            model.model.save(path)
            artifacts[key] = str(path)
            entries.append({"artifact": key, "spec": _spec_to_json(model.spec), "version": model.version})
        settings_json = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        settings_json["compute"] = {}  # a served model computes where it is served: local threads
        config_path = Path(folder) / "inference_config.json"
        config_path.write_text(json.dumps({"models": entries, "settings": settings_json, "task": task,
                                           "batch_size": batch_size}, default=dict, indent=2), encoding="utf-8")
        artifacts[CONFIG_ARTIFACT] = str(config_path)
        return mlflow.pyfunc.log_model(
            name=name, python_model=InferencePyfunc(), artifacts=artifacts,
            code_paths=[str(Path(covid_imaging.__file__).parent)],
            pip_requirements=_requirements(),
        )


def _requirements() -> list[str]:
    """The project's pinned dependencies (the package itself travels in ``code_paths``)."""
    from importlib.metadata import PackageNotFoundError, requires  # noqa: PLC0415

    try:
        return [r.split(";")[0].strip() for r in (requires("covid_imaging") or []) if "extra ==" not in r]
    except PackageNotFoundError:
        return []
