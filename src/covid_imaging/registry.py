"""The model registry: every trained model of the project, declared once.

A model is declared by **one parameters block** in ``conf/base/parameters``, under the
parameters key of its family (which is also its Kedro/MLflow namespace root):

======================  =======================  ========  ==============
family                  namespace root / key     modality  purpose
======================  =======================  ========  ==============
``segmentation``        ``segmentation``         cxr       segmentation
``cxr_classification``  ``classification``       cxr       classification
``ct_classification``   ``ct_classification``    ct        classification
======================  =======================  ========  ==============

This module reads those blocks (``conf/base`` only: the *set* of models and what each
one is must not depend on the run environment; environments may still override
hyperparameters such as ``data.image_size`` at run time) and turns each into a
:class:`ModelSpec`: family, name (the namespace leaf), builder, input size, classes,
image variant, transfer source and shortcut-audit pairing. The pipelines, the MLflow
hook and the tests derive their model lists from here; adding a model is one
parameters block, plus a builder if the architecture is new.

Identity keys read from a block (everything else in it is a hyperparameter):

* ``model.builder`` (required: a block is a trained model exactly when it has a
  ``model`` section; other blocks under a family key, like ``segmentation.ensemble``,
  which only evaluates the trained models' mean, are not models);
* ``data.image_size`` (required);
* classifiers: ``data.classes`` (required), ``data.image_variant`` (default ``auto``),
  ``model.transfer_from`` (the model whose weights it starts from; implies
  ``model.strategy: transfer``), ``model.audit_of`` (this model is the lung-less
  shortcut audit of that model), ``model.compare_with`` (a model of the same classes
  that this one is compared with on the same test images: the pipeline reports the
  paired difference with its CI, e.g. model_2 against model_1).

Modality is separate from purpose: manifest rows carry a ``task`` that historically
names either (``cxr``/``ct`` in the demo set, ``segmentation``/``classification`` in
the curated set); :func:`modality_of_task` maps each known task to its modality and
:func:`check_modality` is the guard every classifier's data passes through, so a CT
slice can never reach an X-ray model (nor the reverse).

This module imports no TensorFlow: the MLflow hook imports it at every Kedro start.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

MODALITIES = ("cxr", "ct")
PURPOSES = ("segmentation", "classification")


@dataclass(frozen=True)
class Family:
    """A group of models trained by one pipeline on one modality for one purpose."""

    name: str
    namespace_root: str  # Kedro namespace root, MLflow run-name prefix and parameters key
    modality: str
    purpose: str
    image_variants: tuple[str, ...] = ()  # allowed ``data.image_variant`` values (classifiers)


FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        "segmentation": Family("segmentation", "segmentation", "cxr", "segmentation"),
        "cxr_classification": Family(
            "cxr_classification", "classification", "cxr", "classification",
            image_variants=("auto", "lungs", "whole", "lungless"),
        ),
        # No lung masking for CT (the lung U-Net is an X-ray model): whole slices only.
        "ct_classification": Family(
            "ct_classification", "ct_classification", "ct", "classification", image_variants=("whole",)
        ),
    }
)

# Manifest ``task`` -> modality. Every task a manifest may carry must be listed: an
# unknown task is an error rather than a guess. ``segmentation``/``classification`` are
# the curated set's (purpose-named) chest X-ray tasks.
TASK_MODALITY: Mapping[str, str] = MappingProxyType(
    {"cxr": "cxr", "segmentation": "cxr", "classification": "cxr", "ct": "ct"}
)
MODALITY_COLUMN = "modality"
# Where the parameters name the segmentation model that masks the lungs for X-ray classifiers.
_LUNG_MASKING_KEY = ("lung_masking", "segmentation_model")


class RegistryError(ValueError):
    """A parameters block that does not declare a valid model."""


class ModalityError(ValueError):
    """Images of one modality offered to a model of another."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered model."""

    family: str
    name: str
    builder: str
    input_size: int
    classes: tuple[str, ...] = ()
    image_variant: str | None = None
    transfer_from: str | None = None
    audit_of: str | None = None
    compare_with: str | None = None
    # (manifest label, class) pairs of data.class_groups, e.g. (bacterial, pneumonia)
    grouped_labels: tuple[tuple[str, str], ...] = ()

    def class_of(self, label: str) -> str | None:
        """The class a manifest label counts as (itself, or its ``data.class_groups`` class); None if none."""
        grouped = dict(self.grouped_labels)
        if label in grouped:
            return grouped[label]
        return label if label in self.classes else None

    @property
    def namespace(self) -> str:
        """``<namespace root>.<name>``: Kedro namespace, catalog prefix, MLflow run name."""
        return f"{FAMILIES[self.family].namespace_root}.{self.name}"

    @property
    def modality(self) -> str:
        return FAMILIES[self.family].modality

    @property
    def purpose(self) -> str:
        return FAMILIES[self.family].purpose


def label_classes(classes: Any, class_groups: Any) -> dict[str, str]:
    """``{manifest label: class}`` of ``data.class_groups`` (``{class: [labels]}``); each
    label in one class only, and every grouped class one of ``classes``."""
    groups = class_groups or {}
    unknown = sorted(set(groups) - set(classes))
    if unknown:
        raise ValueError(f"data.class_groups names {unknown}, which are not in data.classes {list(classes)}")
    mapping: dict[str, str] = {}
    for name, members in groups.items():
        for member in members:
            if mapping.setdefault(member, name) != name:
                raise ValueError(f"data.class_groups puts label {member!r} in both {mapping[member]!r} and {name!r}")
    return mapping


# ----------------------------------------------------------------------- modality


# The CT models trained again on rotated test folds (pipeline ct_classification_cv): one
# namespace (and MLflow run) per model under this root, parameters from the family's blocks.
CT_CV_NAMESPACE_ROOT = "ct_classification_cv"


def namespace_roots() -> tuple[str, ...]:
    """The namespace roots of every family (what the MLflow hook tracks)."""
    return tuple(family.namespace_root for family in FAMILIES.values())


def modality_of_task(task: str) -> str:
    """The imaging modality of a manifest task (``cxr`` or ``ct``)."""
    try:
        return TASK_MODALITY[str(task)]
    except KeyError:
        raise ModalityError(
            f"Unknown manifest task {task!r}: its modality is not declared. Known tasks: "
            f"{dict(TASK_MODALITY)} (covid_imaging.registry.TASK_MODALITY)"
        ) from None


def modalities(table: Any) -> Any:
    """Per-row modality of a manifest-like DataFrame: its ``modality`` column when it
    has one (checked against the task), otherwise derived from ``task``."""
    derived = table["task"].map(modality_of_task) if "task" in table.columns else None
    if MODALITY_COLUMN in table.columns:
        declared = table[MODALITY_COLUMN].astype(str)
        unknown = sorted(set(declared) - set(MODALITIES))
        if unknown:
            raise ModalityError(f"Unknown modality {unknown}; expected one of {MODALITIES}")
        if derived is not None and (declared != derived).any():
            bad = table.loc[declared != derived, ["task", MODALITY_COLUMN]].drop_duplicates()
            raise ModalityError(f"modality column contradicts the task: {bad.to_dict('records')}")
        return declared
    if derived is None:
        raise ModalityError("Table has neither a 'modality' nor a 'task' column")
    return derived


def with_modality(table: Any) -> Any:
    """A copy of ``table`` with its ``modality`` column (see :func:`modalities`)."""
    return table.assign(**{MODALITY_COLUMN: modalities(table).to_numpy()})


def check_modality(table: Any, modality: str, context: str) -> Any:
    """The guard: fail unless every row of ``table`` is of ``modality``; returns ``table``."""
    if modality not in MODALITIES:
        raise ModalityError(f"Unknown modality {modality!r}; expected one of {MODALITIES}")
    found = modalities(table)
    wrong = found != modality
    if wrong.any():
        ids = list(table.loc[wrong, "image_id"][:3]) if "image_id" in table.columns else []
        raise ModalityError(
            f"{context}: {int(wrong.sum())} image(s) of modality {sorted(set(found[wrong]))} "
            f"offered to a {modality} model (e.g. {ids}); a model only ever sees its own modality"
        )
    return table


# ------------------------------------------------------------------------ registry


def _default_parameters_dir() -> Path:
    """``conf/base/parameters`` of this project (the package's source tree, else cwd)."""
    override = os.environ.get("COVID_IMAGING_PARAMETERS_DIR")
    candidates = [Path(override)] if override else []
    candidates += [
        Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters",
        Path.cwd() / "conf" / "base" / "parameters",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RegistryError(f"No conf/base/parameters folder found (looked in {[str(c) for c in candidates]})")


def _read_parameters(folder: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
    for path in files:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(content, dict):
            raise RegistryError(f"{path}: parameters must be a mapping")
        for key, value in content.items():
            if key in merged:
                raise RegistryError(f"Parameters key {key!r} is defined in two files (second: {path})")
            merged[key] = value
    return merged


def _identity(value: Any, where: str, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, str) and "${" in value:
        raise RegistryError(f"{where} declares a model and must be a literal, not an interpolation ({value!r})")
    if not isinstance(value, kind):
        raise RegistryError(f"{where} must be {kind}, got {value!r}")
    return value


def _spec(family: Family, name: str, block: Any) -> ModelSpec:
    where = f"{family.namespace_root}.{name}"
    model = block["model"]
    data = block.get("data") or {}
    if not isinstance(model, dict) or "builder" not in model:
        raise RegistryError(f"{where}.model.builder is required (the model section declares a trained model)")
    builder = _identity(model["builder"], f"{where}.model.builder", str)
    if "image_size" not in data:
        raise RegistryError(f"{where}.data.image_size is required")
    input_size = _identity(data["image_size"], f"{where}.data.image_size", int)
    if family.purpose == "segmentation":
        return ModelSpec(family.name, name, builder, input_size)

    classes = tuple(_identity(data.get("classes"), f"{where}.data.classes", list))
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(isinstance(c, str) for c in classes):
        raise RegistryError(f"{where}.data.classes must list >= 2 distinct class names, got {list(classes)}")
    variant = _identity(data.get("image_variant", family.image_variants[0]), f"{where}.data.image_variant", str)
    if variant not in family.image_variants:
        raise RegistryError(f"{where}.data.image_variant must be one of {family.image_variants}, got {variant!r}")
    transfer_from = model.get("transfer_from")
    if transfer_from is not None:
        _identity(transfer_from, f"{where}.model.transfer_from", str)
    if (transfer_from is not None) != (model.get("strategy") == "transfer"):
        raise RegistryError(f"{where}: model.strategy 'transfer' and model.transfer_from go together")
    audit_of = model.get("audit_of")
    if audit_of is not None:
        _identity(audit_of, f"{where}.model.audit_of", str)
        if variant != "lungless":
            raise RegistryError(f"{where}: a shortcut-audit model (audit_of) trains on image_variant 'lungless'")
    compare_with = model.get("compare_with")
    if compare_with is not None:
        _identity(compare_with, f"{where}.model.compare_with", str)
    try:
        grouped = tuple(label_classes(classes, data.get("class_groups")).items())
    except ValueError as error:
        raise RegistryError(f"{where}: {error}") from None
    return ModelSpec(family.name, name, builder, input_size, classes, variant, transfer_from, audit_of, compare_with,
                     grouped)


class Registry:
    """The registered models, validated as a whole (references resolve within a family)."""

    def __init__(self, specs: Iterable[ModelSpec], lung_segmentation_model: str | None = None) -> None:
        self._specs: dict[tuple[str, str], ModelSpec] = {}
        for spec in specs:
            if spec.family not in FAMILIES:
                raise RegistryError(f"Unknown family {spec.family!r} of {spec.name!r}; known: {sorted(FAMILIES)}")
            if (spec.family, spec.name) in self._specs:
                raise RegistryError(f"Model {spec.namespace} is declared twice")
            self._specs[(spec.family, spec.name)] = spec
        for spec in self._specs.values():
            for field, target in (("transfer_from", spec.transfer_from), ("audit_of", spec.audit_of),
                                  ("compare_with", spec.compare_with)):
                if target is None:
                    continue
                other = self._specs.get((spec.family, target))
                if other is None or target == spec.name:
                    raise RegistryError(
                        f"{spec.namespace}.model.{field} = {target!r} is not another model of family {spec.family}"
                    )
                if field in ("audit_of", "compare_with") and other.classes != spec.classes:
                    verb = "audits" if field == "audit_of" else "is compared with"
                    raise RegistryError(f"{spec.namespace} {verb} {target} and must have its classes {other.classes}")
        segmentation = self.names("segmentation")
        if lung_segmentation_model is not None and lung_segmentation_model not in segmentation:
            raise RegistryError(
                f"lung_masking.segmentation_model = {lung_segmentation_model!r} is not a registered "
                f"segmentation model {segmentation}"
            )
        self.lung_segmentation_model = lung_segmentation_model

    def __iter__(self):
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def models(self, family: str) -> tuple[ModelSpec, ...]:
        """The models of a family, in declaration order."""
        if family not in FAMILIES:
            raise RegistryError(f"Unknown family {family!r}; known: {sorted(FAMILIES)}")
        return tuple(spec for (fam, _), spec in self._specs.items() if fam == family)

    def names(self, family: str) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.models(family))

    def get(self, family: str, name: str) -> ModelSpec:
        try:
            return self._specs[(family, name)]
        except KeyError:
            raise RegistryError(f"No model {name!r} in family {family!r}; registered: {self.names(family)}") from None

    def by_namespace(self, namespace: str) -> ModelSpec | None:
        """The model whose namespace is ``namespace`` (``classification.resnet50``), if any."""
        return next((spec for spec in self if spec.namespace == namespace), None)

    def paired_comparisons(self, family: str) -> tuple[tuple[ModelSpec, ModelSpec], ...]:
        """(model, the model it is compared with) pairs of a family (``model.compare_with``)."""
        return tuple((spec, self.get(family, spec.compare_with)) for spec in self.models(family) if spec.compare_with)

    def shortcut_audits(self, family: str) -> tuple[tuple[ModelSpec, ModelSpec], ...]:
        """(audited model, its lung-less audit model) pairs of a family."""
        return tuple((self.get(family, spec.audit_of), spec) for spec in self.models(family) if spec.audit_of)


def registry_from_parameters(parameters: Mapping[str, Any]) -> Registry:
    """Build the registry from (merged) parameters, e.g. a parsed ``conf/base``."""
    specs = []
    for family in FAMILIES.values():
        blocks = parameters.get(family.namespace_root) or {}
        if not isinstance(blocks, dict):
            raise RegistryError(f"Parameters key {family.namespace_root!r} must map model names to blocks")
        for name, block in blocks.items():
            if not isinstance(block, dict):
                raise RegistryError(f"{family.namespace_root}.{name}: a model block must be a mapping, got {block!r}")
            if str(name).startswith("_") or "model" not in block:
                continue  # not a trained model (e.g. segmentation.ensemble: evaluation only)
            specs.append(_spec(family, name, block))
    lung = (parameters.get(_LUNG_MASKING_KEY[0]) or {}).get(_LUNG_MASKING_KEY[1])
    if lung is not None:
        _identity(lung, ".".join(_LUNG_MASKING_KEY), str)
    return Registry(specs, lung_segmentation_model=lung)


@functools.cache
def _load(folder: str) -> Registry:
    return registry_from_parameters(_read_parameters(Path(folder)))


def load_registry(parameters_dir: str | os.PathLike | None = None) -> Registry:
    """The project's registry, read from ``conf/base/parameters`` (cached per folder)."""
    folder = Path(parameters_dir) if parameters_dir is not None else _default_parameters_dir()
    return _load(str(folder.resolve()))
