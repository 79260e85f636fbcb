"""Finding the trained models to apply: a catalog version (latest by default) or an MLflow URI.

The catalog writes every model as a versioned ``.keras`` file,
``data/06_models/<namespace root>/<name>.keras/<version>/<name>.keras``. The
:class:`ModelStore` loads one through kedro-datasets' own ``TensorFlowModelDataset``,
so "latest" and an explicit version mean exactly what they mean to the catalog. An
MLflow model (``runs:/<run id>/model``, ``models:/<name>/<version>``, or any artifact
URI) is downloaded with MLflow and the ``.keras`` file inside it is loaded.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import Version

from covid_imaging.registry import FAMILIES, ModelSpec

MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


class ModelNotFoundError(FileNotFoundError):
    """A selected model has no trained version (or the version/URI does not exist)."""


@dataclass(frozen=True)
class LoadedModel:
    """A trained model ready to predict, with where it came from."""

    spec: ModelSpec
    model: Any  # keras.Model
    version: str  # the catalog version (timestamp) or the MLflow URI

    @property
    def namespace(self) -> str:
        return self.spec.namespace


def _import_custom_objects() -> None:
    # The project's custom layers, losses and metrics register themselves with Keras on
    # import (every module with ``register_keras_serializable``; a test keeps this list whole).
    import covid_imaging.classification.layers  # noqa: F401, PLC0415
    import covid_imaging.classification.training  # noqa: F401, PLC0415
    import covid_imaging.segmentation.conventions  # noqa: F401, PLC0415
    import covid_imaging.segmentation.losses  # noqa: F401, PLC0415


def load_keras_file(path: str | Path) -> Any:
    import keras  # noqa: PLC0415

    _import_custom_objects()
    return keras.models.load_model(str(path), compile=False)


def load_mlflow_model(uri: str) -> Any:
    """The Keras model behind an MLflow URI (the ``.keras`` file it holds)."""
    import mlflow  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="covid-imaging-model-") as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
        except Exception as error:  # MLflow raises several types for a missing run/model
            raise ModelNotFoundError(f"MLflow model {uri!r} cannot be downloaded: {error}") from None
        files = [local] if local.is_file() else sorted(local.rglob("*.keras"))
        if len(files) != 1 or files[0].suffix != ".keras":
            raise ModelNotFoundError(
                f"MLflow model {uri!r} must hold exactly one .keras file; found {[f.name for f in files]}"
            )
        return load_keras_file(files[0])


class ModelStore:
    """Loads registered models by namespace from the versioned catalog files or MLflow."""

    def __init__(self, filepath_pattern: str) -> None:
        if "{namespace_root}" not in filepath_pattern or "{name}" not in filepath_pattern:
            raise ValueError(
                f"filepath_pattern must contain {{namespace_root}} and {{name}}, got {filepath_pattern!r}"
            )
        self.filepath_pattern = filepath_pattern

    def filepath(self, spec: ModelSpec) -> str:
        return self.filepath_pattern.format(namespace_root=FAMILIES[spec.family].namespace_root, name=spec.name)

    def load(self, spec: ModelSpec, version: str | None = None, mlflow_uri: str | None = None) -> LoadedModel:
        """The model of ``spec``: from ``mlflow_uri`` if given, else catalog ``version`` (None: latest)."""
        if mlflow_uri:
            if not str(mlflow_uri).startswith(MLFLOW_SCHEMES) and "://" not in str(mlflow_uri):
                raise ValueError(
                    f"inference.mlflow_models.{spec.namespace}: {mlflow_uri!r} is not an MLflow URI "
                    f"(expected one of {MLFLOW_SCHEMES}...)"
                )
            return LoadedModel(spec, load_mlflow_model(str(mlflow_uri)), str(mlflow_uri))
        from kedro_datasets.tensorflow import TensorFlowModelDataset  # noqa: PLC0415

        _import_custom_objects()
        filepath = self.filepath(spec)
        dataset = TensorFlowModelDataset(
            filepath=filepath, version=Version(version, None), load_args={"compile": False}
        )
        try:
            resolved = dataset.resolve_load_version()
            model = dataset.load()
        except DatasetError as error:
            wanted = f"version {version!r}" if version else "any version"
            raise ModelNotFoundError(
                f"No trained model {spec.namespace} ({wanted}) under {filepath}: train it first "
                f"(e.g. kedro run --pipeline={'segmentation' if spec.purpose == 'segmentation' else FAMILIES[spec.family].namespace_root}), "
                f"or choose another with inference.versions / inference.mlflow_models ({error})"
            ) from None
        return LoadedModel(spec, model, str(resolved))


class ModelStoreDataset(AbstractDataset[None, ModelStore]):
    """Catalog entry for the trained models' location; ``load()`` gives a :class:`ModelStore`.

    ``filepath`` is the pattern (``{namespace_root}``, ``{name}``): under that key Kedro
    makes a relative path absolute under the project, as for the training entries that
    write the models, so a run started from another folder finds them.
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._pattern = filepath
        self.metadata = metadata

    def load(self) -> ModelStore:
        return ModelStore(self._pattern)

    def save(self, data: None) -> None:
        raise DatasetError("ModelStoreDataset is read-only: models are written by the training pipelines")

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._pattern}
