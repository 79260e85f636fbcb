"""Segmentation pipelines: one template, instantiated per model with a namespace.

Every model in ``covid_imaging.segmentation.models.MODEL_BUILDERS`` that has a
parameters block ``segmentation.<name>`` gets its own pipeline ``segmentation.<name>``
(train → evaluate on test → summarise), and one node compares them all.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.segmentation.nodes import (
    combine_models,
    compare_segmentation_models,
    evaluate_on_test,
    select_segmentation_images,
    stress_test,
    summarise_metrics,
    train_segmentation,
    training_curves,
)
from covid_imaging.registry import load_registry

# The models trained by `kedro run --pipeline=segmentation`: the registry's segmentation
# family (a block with a `model` section in conf/base/parameters/segmentation.yml).
SEGMENTATION_MODELS = load_registry().names("segmentation")
# The mean of the trained models' probability maps, evaluated (and saved) like a model.
ENSEMBLE = "ensemble"


def model_template() -> Pipeline:
    """Train → evaluate → summarise, for one model (names are namespaced later)."""
    return pipeline(
        [
            node(
                train_segmentation,
                ["segmentation_images", "params:model", "params:training", "params:augmentation", "params:data"],
                ["model", "training_history"],
                name="train",
            ),
            node(
                training_curves, ["training_history", "params:model", "params:training"], "training_curves",
                name="plot_training_curves",
            ),
            *evaluation_nodes(),
        ]
    )


def evaluation_nodes() -> list:
    """Evaluate → summarise → stress test, for a trained ``model`` (names are namespaced later)."""
    return [
        node(
            evaluate_on_test,
            [
                "model", "segmentation_images", "raw_images@files",
                "params:data", "params:postprocessing", "params:preprocessing", "params:compute",
            ],
            ["per_image_metrics", "test_metrics", "sample_predictions", "worst_predictions"],
            name="evaluate_on_test",
        ),
        node(summarise_metrics, "per_image_metrics", "metrics_summary", name="summarise_metrics"),
        node(
            stress_test,
            ["model", "segmentation_images", "params:data", "params:postprocessing", "params:stress_test",
             "params:compute"],
            ["stress_test", "stress_metrics"],
            name="stress_test",
        ),
    ]


def ensemble_pipeline(models: tuple[str, ...]) -> Pipeline:
    """The mean probability map of the trained models, evaluated like one of them."""
    template = pipeline(
        [node(combine_models, {name: f"member_{name}" for name in models}, "model", name="combine_models"),
         *evaluation_nodes()]
    )
    return pipeline(
        template,
        namespace=f"segmentation.{ENSEMBLE}",
        inputs={f"member_{name}": f"segmentation.{name}.model" for name in models} | {name: name for name in SHARED_INPUTS},
        parameters=SHARED_PARAMETERS,
    )


# Inputs every model pipeline shares (kept out of the model namespace).
SHARED_INPUTS = {"segmentation_images", "raw_images@files"}
SHARED_PARAMETERS = {"params:preprocessing": "params:preprocessing", "params:compute": "params:compute"}


def create_pipeline(models: tuple[str, ...] = SEGMENTATION_MODELS, compare: bool = True, **kwargs) -> Pipeline:
    select = pipeline(
        [
            node(
                select_segmentation_images,
                ["model_input_table", "params:segmentation_data"],
                "segmentation_images",
                name="select_segmentation_images",
            )
        ]
    )
    per_model = [
        pipeline(
            model_template(), namespace=f"segmentation.{name}", inputs=SHARED_INPUTS, parameters=SHARED_PARAMETERS
        )
        for name in models
    ]
    evaluated = (*models, ENSEMBLE) if compare and len(models) > 1 else models
    if evaluated != models:
        per_model.append(ensemble_pipeline(models))
    compare_pipeline = pipeline(
        [
            node(
                compare_segmentation_models,
                {name: f"segmentation.{name}.metrics_summary" for name in evaluated},
                "segmentation_comparison",
                name="compare_segmentation_models",
            )
        ]
    )
    models_pipeline = select + sum(per_model, Pipeline([]))
    return models_pipeline + compare_pipeline if compare else models_pipeline
