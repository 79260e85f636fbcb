"""Project pipelines.

``data_preparation`` = demo data (when enabled) → ingestion → splits → preprocessing.
Model pipelines are prefixed with it, so ``kedro run --pipeline=segmentation`` runs
from raw files to evaluated, compared models.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from covid_imaging.quiet import import_tensorflow_quietly

import_tensorflow_quietly()  # before the pipelines import Keras: no CUDA probing on CPU runs

from covid_imaging.pipelines import (  # noqa: E402
    classification,
    ct_classification,
    demo_data,
    inference,
    ingestion,
    preprocessing,
    segmentation,
    segmentation_cross_source,
    splits,
)


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines."""
    demo = demo_data.create_pipeline()
    data_preparation = demo + ingestion.create_pipeline() + splits.create_pipeline() + preprocessing.create_pipeline()
    segmentation_models = segmentation.create_pipeline()
    return {
        "demo_data": demo,
        "ingestion": ingestion.create_pipeline(),
        "splits": splits.create_pipeline(),
        "preprocessing": preprocessing.create_pipeline(),
        "data_preparation": data_preparation,
        "segmentation": data_preparation + segmentation_models,
        "segmentation_models": segmentation_models,  # reuse prepared data: no re-ingestion
        # Leave-one-source-out folds per training recipe (its own job: 8 trainings)
        "segmentation_cross_source": data_preparation + segmentation_cross_source.create_pipeline(),
        # Classification masks the lungs with a segmentation model it trains first, so
        # it also works on a fresh clone; classification_models reuses a trained one.
        "classification": data_preparation
        + segmentation.create_pipeline(models=(classification.pipeline.LUNG_SEGMENTATION_MODEL,), compare=False)
        + classification.create_pipeline(),
        "classification_models": classification.create_pipeline(),
        # Lung CT slices, COVID-19 vs non-COVID: the nine registered CT models (no lung masking)
        "ct_classification": data_preparation + ct_classification.create_pipeline(),
        "ct_classification_models": ct_classification.create_pipeline(),
        # The same models on rotated test folds: every scan tested once (5 trainings per model)
        "ct_classification_cv": data_preparation + ct_classification.create_cv_pipeline(),
        # Trained models applied to new images (no training, no data preparation)
        "inference": inference.create_pipeline(),
        "inference_model": inference.create_model_pipeline(),  # the same, as one MLflow pyfunc model
        "__default__": data_preparation,
    }
