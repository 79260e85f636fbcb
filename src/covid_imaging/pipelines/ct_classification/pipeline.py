"""Lung CT classification (COVID-19 vs non-COVID): one namespaced pipeline per CT model.

The models are the registry's ``ct_classification`` family (:mod:`covid_imaging.registry`,
the blocks under ``ct_classification`` in ``conf/base/parameters/classification.yml``):
basic CNN, AlexNet, VGG16, VGG19, MobileNet, ResNet101, ResNet152, DenseNet201 and
InceptionV3, each ``ct_classification.<name>`` (its Kedro namespace, catalog prefix and
MLflow run). Every model uses the X-ray classifiers' template
(:func:`covid_imaging.pipelines.classification.pipeline.model_template`: train →
evaluate → Grad-CAM, one training core) with every node guarded to CT slices
(``ModalityGuarded(..., "ct")``), after a node that sets the model's input size for
this run (``data.max_image_size``); the basic CNN also writes its
per-layer activation maps. ``ct_classification_comparison`` puts the models side by side.
"""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.classification.nodes import ModalityGuarded
from covid_imaging.pipelines.classification.pipeline import model_template
from covid_imaging.pipelines.ct_classification.nodes import (
    compare_ct_classifiers,
    layer_activation_maps,
    model_data,
    select_ct_images,
)
from covid_imaging.registry import FAMILIES, ModelSpec, RegistryError, load_registry

FAMILY = "ct_classification"
NAMESPACE_ROOT = FAMILIES[FAMILY].namespace_root
MODALITY = FAMILIES[FAMILY].modality
_REGISTRY = load_registry()
CT_CLASSIFICATION_MODELS: tuple[str, ...] = _REGISTRY.names(FAMILY)
# Builders whose per-layer activation maps are drawn (the reference shows the basic CNN's).
ACTIVATION_MAP_BUILDERS = ("basic_cnn",)


def _specs(models: Iterable[str] | None) -> list[ModelSpec]:
    specs = list(_REGISTRY.models(FAMILY))
    if models is None:
        return specs
    models = set(models)
    unknown = sorted(models - {spec.name for spec in specs})
    if unknown:
        raise RegistryError(f"{unknown} are not registered {FAMILY} models: {[spec.name for spec in specs]}")
    return [spec for spec in specs if spec.name in models]


def ct_model_template(spec: ModelSpec) -> Pipeline:
    """Effective input size → the classifier template (no lung masks) [→ activation maps]."""
    if spec.transfer_from:
        raise RegistryError(f"{spec.namespace}: transfer between CT models is not wired (transfer_from)")
    sizing = node(
        model_data, ["params:data", "params:model"], ["data", "input_metrics"], name="model_data",
    )
    nodes = [sizing, model_template(None, spec.modality, lung_masks=False, data="data")]
    if spec.builder in ACTIVATION_MAP_BUILDERS:
        nodes.append(
            node(ModalityGuarded(layer_activation_maps, spec.modality),
                 ["model", "classification_inputs", "data", "params:gradcam"], "activation_maps",
                 name="activation_maps")
        )
    return pipeline(nodes)


def create_pipeline(models: Iterable[str] | None = None, **kwargs) -> Pipeline:
    """CT slice selection + one namespaced pipeline per registered CT model + comparison.

    ``models`` selects registered models by name (default: all of them).
    """
    specs = _specs(models)
    selection = pipeline([
        node(select_ct_images, ["model_input_table", "params:ct_classification_data", "params:splits"],
             "ct_classification_inputs", name="select_ct_images"),
    ])
    per_model = [
        pipeline(
            ct_model_template(spec), namespace=spec.namespace,
            inputs={"classification_inputs": "ct_classification_inputs"},
        )
        for spec in specs
    ]
    summary_inputs: dict[str, str] = {"images": "ct_classification_inputs"}
    for spec in specs:
        for key, output in (("test", "test_metrics"), ("gradcam", "gradcam_metrics"), ("sizes", "input_metrics"),
                            ("report", "metrics_report")):
            summary_inputs[f"{spec.name}__{key}"] = f"{spec.namespace}.{output}"
    summary = pipeline([
        node(compare_ct_classifiers, summary_inputs, "ct_classification_comparison", name="compare_ct_classifiers"),
    ])
    return selection + sum(per_model, Pipeline([])) + summary
