"""Inference pipeline: new images (a folder, any ingestion layout, or a container) → masks,
overlays, class probabilities, Grad-CAM, ``predictions.csv``, external metrics, a report."""

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.inference.nodes import (
    build_inference_manifest,
    log_inference_pyfunc,
    predict_images,
)

# The models and the settings that decide the outputs: the same for the run and the logged pyfunc.
MODELS_AND_SETTINGS = ["inference_model_store", "params:inference", "params:preprocessing", "params:lung_masking",
                       "params:segmentation", "params:segmentation_data"]


def create_pipeline(**kwargs) -> Pipeline:
    return pipeline(
        [
            node(
                build_inference_manifest,
                ["inference_raw_images", "params:inference", "params:compute"],
                ["inference_manifest", "inference_rejected_files"],
                name="build_inference_manifest",
            ),
            node(
                predict_images,
                ["inference_manifest", "inference_rejected_files", "inference_raw_images", *MODELS_AND_SETTINGS,
                 "params:compute"],
                "inference_outputs",
                name="predict_images",
            ),
        ]
    )


def create_model_pipeline(**kwargs) -> Pipeline:
    """Log the selected models and their processing as one MLflow pyfunc model."""
    return pipeline(
        [
            node(
                log_inference_pyfunc,
                MODELS_AND_SETTINGS,
                "inference_mlflow_model",
                name="log_inference_pyfunc",
            )
        ]
    )
