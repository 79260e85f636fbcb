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

``ct_classification_cv`` (:func:`create_cv_pipeline`) evaluates the same models on
rotated test folds, so that every scan is tested once: with a handful of scans per
split, one test split cannot show much (see the README).
"""

from __future__ import annotations

from collections.abc import Iterable

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.classification.nodes import ModalityGuarded
from covid_imaging.pipelines.classification.pipeline import model_template
from covid_imaging.pipelines.ct_classification.nodes import (
    compare_ct_classifiers,
    evaluate_out_of_fold,
    layer_activation_maps,
    model_data,
    select_ct_folds,
    select_ct_images,
    train_test_folds,
)
from covid_imaging.registry import (
    CT_CV_NAMESPACE_ROOT,
    FAMILIES,
    ModelSpec,
    RegistryError,
    load_registry,
)

FAMILY = "ct_classification"
NAMESPACE_ROOT = FAMILIES[FAMILY].namespace_root
# Rotated test folds of the same models (``ct_classification_cv.<name>``, their own MLflow
# runs), with each model's parameters read from its registry block.
CV_NAMESPACE_ROOT = CT_CV_NAMESPACE_ROOT
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


def _study(
    select, selected: str, per_model: dict[str, Pipeline], outputs: dict[str, str], comparison: str,
    comparison_node: str,
) -> Pipeline:
    """Selection node (``select`` → ``selected``) + the namespaced per-model pipelines
    (``{namespace: pipeline}``) + the comparison of their ``outputs`` (``{key: output}``)."""
    selection = node(select, ["model_input_table", "params:ct_classification_data", "params:splits"], selected,
                     name=select.__name__)
    summary_inputs: dict[str, str] = {"images": selected}
    for namespace in per_model:
        for key, output in outputs.items():
            summary_inputs[f"{namespace.rsplit('.', 1)[-1]}__{key}"] = f"{namespace}.{output}"
    summary = node(compare_ct_classifiers, summary_inputs, comparison, name=comparison_node)
    return pipeline([selection]) + sum(per_model.values(), Pipeline([])) + pipeline([summary])


def create_pipeline(models: Iterable[str] | None = None, **kwargs) -> Pipeline:
    """CT slice selection + one namespaced pipeline per registered CT model + comparison.

    ``models`` selects registered models by name (default: all of them).
    """
    per_model = {
        spec.namespace: pipeline(ct_model_template(spec), namespace=spec.namespace,
                                 inputs={"classification_inputs": "ct_classification_inputs"})
        for spec in _specs(models)
    }
    outputs = {"test": "test_metrics", "gradcam": "gradcam_metrics", "sizes": "input_metrics", "report": "metrics_report"}
    return _study(select_ct_images, "ct_classification_inputs", per_model, outputs, "ct_classification_comparison",
                  "compare_ct_classifiers")


def ct_cv_model_template() -> Pipeline:
    """Effective input size → one model per rotated fold → evaluation of the out-of-fold predictions."""
    return pipeline([
        node(model_data, ["params:data", "params:model"], ["data", "input_metrics"], name="model_data"),
        node(ModalityGuarded(train_test_folds, MODALITY, argument="folds"),
             ["ct_classification_folds", "params:model", "params:training", "data", "params:evaluation",
              "params:ct_classification_cv"],
             ["fold_predictions", "fold_metrics"], name="train_test_folds"),
        node(evaluate_out_of_fold, ["fold_predictions", "data", "params:evaluation"],
             ["metrics_report", "test_metrics", "confusion_matrix", "roc_curves", "predictions"],
             name="evaluate_out_of_fold"),
    ])


def create_cv_pipeline(models: Iterable[str] | None = None, **kwargs) -> Pipeline:
    """Rotated test folds (``ct_classification_cv``): the CT slices under every rotation of
    the split (each slice, and each scan, tested once), one namespaced pipeline per
    registered CT model trained on every fold, and the comparison of their out-of-fold
    predictions (``ct_classification_cv_comparison``). ``models`` as :func:`create_pipeline`.
    """
    per_model = {
        f"{CV_NAMESPACE_ROOT}.{spec.name}": pipeline(
            ct_cv_model_template(), namespace=f"{CV_NAMESPACE_ROOT}.{spec.name}",
            inputs={"ct_classification_folds"},
            # the model's own parameter blocks, as the single-split pipeline reads them
            parameters={f"params:{key}": f"params:{spec.namespace}.{key}" for key in
                        ("data", "model", "training", "evaluation")}
            | {f"params:{CV_NAMESPACE_ROOT}": f"params:{CV_NAMESPACE_ROOT}"},
        )
        for spec in _specs(models)
    }
    outputs = {"test": "test_metrics", "folds": "fold_metrics", "sizes": "input_metrics", "report": "metrics_report"}
    return _study(select_ct_folds, "ct_classification_folds", per_model, outputs, "ct_classification_cv_comparison",
                  "compare_ct_classifiers_cv")
