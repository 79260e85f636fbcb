"""Chest X-ray classification pipelines: lung masking, then one namespaced pipeline per model.

Models (``classification.<name>``), from the two reference studies:

* ``simple_cnn_pneumonia`` (model_0): simple CNN on normal / bacterial / viral pneumonia;
* ``simple_cnn_scratch`` (model_1): the same CNN from scratch on normal / bacterial / COVID-19;
* ``simple_cnn_transfer`` (model_2): model_0's weights transferred, new head trained with
  the rest frozen, then everything fine-tuned at 1e-4;
* ``simple_cnn_unmasked``: model_1 on whole (unmasked) images, to compare masked vs unmasked;
* ``lungless_audit``: model_1 on images with the lungs blacked out (shortcut audit);
* ``resnet50``: new top on a frozen base, then the last 11 layers fine-tuned at 1e-4;
* ``hrnet``: HRNet feature extractor + FC head, SGD with step decay.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.classification.nodes import (
    audit_shortcuts,
    build_classification_inputs,
    compare_classifiers,
    evaluate_classifier,
    explain_with_gradcam,
    mask_lungs,
    select_classification_images,
    train_classification_model,
    transfer_and_fine_tune,
)

# name -> the model it transfers from (None: trained from its own initialisation)
CLASSIFICATION_MODELS: dict[str, str | None] = {
    "simple_cnn_pneumonia": None,
    "simple_cnn_scratch": None,
    "simple_cnn_transfer": "simple_cnn_pneumonia",
    "simple_cnn_unmasked": None,
    "lungless_audit": None,
    "resnet50": None,
    "hrnet": None,
}
LUNG_SEGMENTATION_MODEL = "unet"  # any of segmentation.MODEL_BUILDERS trained by the segmentation pipeline


def _evaluation_nodes() -> list:
    return [
        node(
            evaluate_classifier,
            ["model", "classification_inputs", "params:data", "params:evaluation"],
            ["metrics_report", "test_metrics", "confusion_matrix", "roc_curves", "predictions"],
            name="evaluate",
        ),
        node(
            explain_with_gradcam,
            ["model", "classification_inputs", "lung_masked_images", "params:data", "params:gradcam"],
            ["gradcam_overlays", "gradcam_metrics"],
            name="grad_cam",
        ),
    ]


def model_template(source_model: str | None) -> Pipeline:
    """Train (from scratch, two-phase, or by transfer) → evaluate → Grad-CAM."""
    if source_model is None:
        train = node(
            train_classification_model,
            ["classification_inputs", "params:model", "params:training", "params:data"],
            ["model", "training_history"],
            name="train",
        )
    else:
        train = node(
            transfer_and_fine_tune,
            ["classification_inputs", "source_model", "params:model", "params:training", "params:data"],
            ["model", "training_history"],
            name="transfer_and_fine_tune",
        )
    return pipeline([train, *_evaluation_nodes()])


def create_pipeline(
    models: dict[str, str | None] = CLASSIFICATION_MODELS, lung_model: str = LUNG_SEGMENTATION_MODEL, **kwargs
) -> Pipeline:
    masking = pipeline(
        [
            node(select_classification_images, ["model_input_table", "params:classification_data"],
                 "classification_images", name="select_classification_images"),
            node(mask_lungs,
                 ["classification_images", "preprocessed_images", f"segmentation.{lung_model}.model", "params:lung_masking"],
                 ["lung_masked_images", "lung_masking_report"], name="mask_lungs"),
            node(build_classification_inputs,
                 ["classification_images", "lung_masking_report", "lung_masked_images", "params:lung_masking"],
                 "classification_inputs", name="build_classification_inputs"),
        ]
    )
    shared = {"classification_inputs", "lung_masked_images"}
    per_model = []
    for name, source in models.items():
        inputs = {key: key for key in shared}
        if source:
            inputs["source_model"] = f"classification.{source}.model"
        per_model.append(pipeline(model_template(source), namespace=f"classification.{name}", inputs=inputs))
    summary_inputs = {}
    for name in models:
        summary_inputs[f"{name}__test"] = f"classification.{name}.test_metrics"
        summary_inputs[f"{name}__gradcam"] = f"classification.{name}.gradcam_metrics"
    summary = pipeline(
        [
            node(compare_classifiers, summary_inputs, "classification_comparison", name="compare_classifiers"),
            node(audit_shortcuts,
                 ["classification.simple_cnn_scratch.test_metrics", "classification.lungless_audit.test_metrics",
                  "params:shortcut_audit"],
                 "shortcut_audit", name="audit_shortcuts"),
        ]
    )
    return masking + sum(per_model, Pipeline([])) + summary
