"""Chest X-ray classification pipelines: lung masking, then one namespaced pipeline per model.

The models are the registry's ``cxr_classification`` family (:mod:`covid_imaging.registry`,
declared by the blocks under ``classification`` in ``conf/base/parameters``), each a
namespaced pipeline ``classification.<name>``. Today, from the two reference studies:

* ``simple_cnn_pneumonia`` (model_0): simple CNN on normal / bacterial / viral pneumonia;
* ``simple_cnn_scratch`` (model_1): the same CNN from scratch on normal / bacterial / COVID-19;
* ``simple_cnn_transfer`` (model_2, ``transfer_from: simple_cnn_pneumonia``): model_0's
  weights transferred, new head trained with the rest frozen, then everything fine-tuned
  at 1e-4;
* ``simple_cnn_unmasked``: model_1 on whole (unmasked) images, to compare masked vs unmasked;
* ``lungless_audit`` (``audit_of: simple_cnn_scratch``): model_1 on images with the lungs
  blacked out (shortcut audit);
* ``resnet50``: new top on a frozen base, then the last 11 layers fine-tuned at 1e-4;
* ``hrnet``: HRNet feature extractor + FC head, SGD with step decay.

Every per-model node refuses images that are not chest X-rays (``ModalityGuarded``).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.classification.nodes import (
    ModalityGuarded,
    audit_shortcuts,
    build_classification_inputs,
    checked_data,
    compare_classifiers,
    compare_paired,
    evaluate_classifier,
    explain_with_gradcam,
    explain_with_gradcam_unmasked,
    mask_lungs,
    plot_learning_curves,
    select_classification_images,
    summarise_seeds,
    train_over_seeds,
    transfer_over_seeds,
)
from covid_imaging.registry import FAMILIES, ModelSpec, RegistryError, load_registry

FAMILY = "cxr_classification"
NAMESPACE_ROOT = FAMILIES[FAMILY].namespace_root
MODALITY = FAMILIES[FAMILY].modality
_REGISTRY = load_registry()
# name -> the model it transfers from (None: trained from its own initialisation)
CLASSIFICATION_MODELS: dict[str, str | None] = {spec.name: spec.transfer_from for spec in _REGISTRY.models(FAMILY)}
if _REGISTRY.lung_segmentation_model is None:
    raise RegistryError("lung_masking.segmentation_model is not set in conf/base/parameters")
# The registered segmentation model whose masks the classifiers use (lung_masking.segmentation_model)
LUNG_SEGMENTATION_MODEL: str = _REGISTRY.lung_segmentation_model


def _evaluation_nodes(modality: str, lung_masks: bool = True, data: str = "data") -> list:
    if lung_masks:
        gradcam = node(
            ModalityGuarded(explain_with_gradcam, modality),
            ["model", "classification_inputs", "lung_masked_images", data, "params:gradcam"],
            ["gradcam_overlays", "gradcam_metrics"],
            name="grad_cam",
        )
    else:
        gradcam = node(
            ModalityGuarded(explain_with_gradcam_unmasked, modality),
            ["model", "classification_inputs", data, "params:gradcam"],
            ["gradcam_overlays", "gradcam_metrics"],
            name="grad_cam",
        )
    return [
        node(
            ModalityGuarded(evaluate_classifier, modality),
            ["model", "classification_inputs", data, "params:evaluation"],
            ["metrics_report", "test_metrics", "confusion_matrix", "roc_curves", "predictions"],
            name="evaluate",
        ),
        gradcam,
    ]


def model_template(
    source_model: str | None, modality: str = MODALITY, lung_masks: bool = True, data: str = "data"
) -> Pipeline:
    """Train (from scratch, two-phase, or by transfer) over ``evaluation.n_seeds`` seeds,
    keeping the seed chosen on the validation split → learning curves, evaluate → Grad-CAM,
    and every seed's test balanced accuracy (mean ± std); every node that reads images is
    guarded so that it only accepts images of ``modality``.

    The one per-model template of every classifier family: ``lung_masks=False`` for
    images without lung masks (CT: Grad-CAM without the lung share); ``data`` names the
    checked data settings the nodes read, the output of the family's head node
    (:func:`xray_model_template`'s ``check_data``, the CT pipeline's ``model_data``).
    """
    outputs = ["model", "training_history", "seed_predictions"]
    if source_model is None:
        train = node(
            ModalityGuarded(train_over_seeds, modality),
            ["classification_inputs", "params:model", "params:training", data, "params:evaluation"],
            outputs,
            name="train",
        )
    else:
        train = node(
            ModalityGuarded(transfer_over_seeds, modality),
            ["classification_inputs", "source_model", "params:model", "params:training", data, "params:evaluation"],
            outputs,
            name="transfer_and_fine_tune",
        )
    seeds = node(summarise_seeds, ["seed_predictions", data, "params:evaluation"], "seed_metrics",
                 name="summarise_seeds")
    curves = node(plot_learning_curves, "training_history", "learning_curves", name="plot_learning_curves")
    return pipeline([train, curves, *_evaluation_nodes(modality, lung_masks, data), seeds])


def xray_model_template(source_model: str | None, modality: str = MODALITY) -> Pipeline:
    """The model's ``data`` block checked over the defaults (typos fail before training) →
    :func:`model_template` on the checked settings (persisted: ``data_settings.json``)."""
    check = node(checked_data, "params:data", "data", name="check_data")
    return pipeline([check]) + model_template(source_model, modality, data="data")


def _specs(models: Iterable[str] | None) -> list[ModelSpec]:
    """The registry's X-ray classifiers, or a subset of them by name (e.g. in tests)."""
    specs = list(_REGISTRY.models(FAMILY))
    if models is None:
        return specs
    models = set(models)
    unknown = sorted(set(models) - {spec.name for spec in specs})
    if unknown:
        raise RegistryError(f"{unknown} are not registered {FAMILY} models: {[spec.name for spec in specs]}")
    return [spec for spec in specs if spec.name in models]


def create_pipeline(
    models: Iterable[str] | None = None, lung_model: str = LUNG_SEGMENTATION_MODEL, **kwargs
) -> Pipeline:
    """Masking + one namespaced pipeline per registered X-ray classifier + comparison + audit.

    ``models`` selects registered models by name (default: all of them); a model's
    transfer source must be selected with it.
    """
    specs = _specs(models)
    selected = {spec.name for spec in specs}
    masking = pipeline(
        [
            node(select_classification_images, ["model_input_table", "params:classification_data"],
                 "classification_images", name="select_classification_images"),
            node(mask_lungs,
                 ["classification_images", "preprocessed_images", f"segmentation.{lung_model}.model", "params:lung_masking",
                  "params:compute"],
                 ["lung_masked_images", "lung_masking_report"], name="mask_lungs"),
            node(build_classification_inputs,
                 ["classification_images", "lung_masking_report", "lung_masked_images", "params:lung_masking"],
                 "classification_inputs", name="build_classification_inputs"),
        ]
    )
    shared = {"classification_inputs", "lung_masked_images"}
    per_model = []
    for spec in specs:
        inputs = {key: key for key in shared}
        if spec.transfer_from:
            if spec.transfer_from not in selected:
                raise RegistryError(f"{spec.namespace} transfers from {spec.transfer_from}, which is not selected")
            inputs["source_model"] = f"{NAMESPACE_ROOT}.{spec.transfer_from}.model"
        per_model.append(
            pipeline(xray_model_template(spec.transfer_from, spec.modality), namespace=spec.namespace, inputs=inputs)
        )
    summary_inputs = {}
    for spec in specs:
        summary_inputs[f"{spec.name}__test"] = f"{spec.namespace}.test_metrics"
        summary_inputs[f"{spec.name}__gradcam"] = f"{spec.namespace}.gradcam_metrics"
        summary_inputs[f"{spec.name}__seeds"] = f"{spec.namespace}.seed_metrics"
    summary_nodes = [node(compare_classifiers, summary_inputs, "classification_comparison", name="compare_classifiers")]
    for spec, baseline in _REGISTRY.paired_comparisons(FAMILY):
        if {spec.name, baseline.name} <= selected:
            summary_nodes.append(
                node(update_wrapper(partial(compare_paired, model=spec.name, baseline=baseline.name), compare_paired),
                     [f"{spec.namespace}.predictions", f"{baseline.namespace}.predictions",
                      f"{spec.namespace}.seed_predictions", f"{baseline.namespace}.seed_predictions",
                      "classification_inputs", f"{spec.namespace}.data", f"params:{spec.namespace}.evaluation"],
                     f"paired_comparison_{spec.name}", name=f"compare_paired_{spec.name}")
            )
    audits = [(audited, audit) for audited, audit in _REGISTRY.shortcut_audits(FAMILY)
              if {audited.name, audit.name} <= selected]
    for index, (audited, audit) in enumerate(audits):
        # The first audit (registry order: the reference task's) writes shortcut_audit,
        # every further one shortcut_audit_<audited model>.
        output = "shortcut_audit" if index == 0 else f"shortcut_audit_{audited.name}"
        summary_nodes.append(
            node(audit_shortcuts,
                 [f"{audited.namespace}.test_metrics", f"{audit.namespace}.test_metrics",
                  "params:shortcut_audit", f"{audited.namespace}.data"],
                 output, name="audit_shortcuts" if index == 0 else f"audit_shortcuts_{audited.name}")
        )
    return masking + sum(per_model, Pipeline([])) + pipeline(summary_nodes)
