"""``kedro run --pipeline=segmentation_cross_source``: leave-one-source-out (and, with
``hold_out: [site]``, leave-sites-out within a source), per training recipe.

One namespaced copy of the template per recipe (``segmentation_cross_source.<variant>``,
its own MLflow run): preprocess the masked images as the recipe says, then one fold per
mask source. Its own pipeline, not part of ``segmentation``: it trains one model per
source and recipe (6 U-Nets for 2 sources and 3 recipes), which would triple the main
job's time.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node, pipeline

from covid_imaging.pipelines.segmentation.nodes import select_segmentation_images
from covid_imaging.pipelines.segmentation_cross_source.nodes import (
    collect_cross_source_images,
    preprocess_variant_images,
    run_cross_source_folds,
    summarise_cross_source,
)

# The training recipes compared; each has a block under segmentation_cross_source.variants
# in conf/base/parameters/segmentation_cross_source.yml.
CROSS_SOURCE_VARIANTS = ("robust", "plain_augmentation", "reference_chain", "input_160")


def _bound(function, variant: str):
    bound = partial(function, variant=variant)
    return update_wrapper(bound, function)


def variant_template(variant: str) -> Pipeline:
    return pipeline(
        [
            node(
                _bound(preprocess_variant_images, variant),
                ["segmentation_images", "manifest", "raw_images@files", "params:preprocessing", "params:segmentation_cross_source"],
                "preprocessed_images",
                name="preprocess_variant_images",
            ),
            node(
                _bound(run_cross_source_folds, variant),
                [
                    "segmentation_images", "preprocessed_images", "raw_images@files",
                    "params:segmentation", "params:preprocessing", "params:segmentation_cross_source",
                ],
                ["per_image", "cross_source_metrics"],
                name="run_cross_source_folds",
            ),
        ]
    )


def create_pipeline(variants: tuple[str, ...] = CROSS_SOURCE_VARIANTS, **kwargs) -> Pipeline:
    shared = {"segmentation_images", "manifest", "raw_images@files"}
    parameters = {"params:preprocessing", "params:segmentation_cross_source", "params:segmentation"}
    per_variant = [
        pipeline(variant_template(name), namespace=f"segmentation_cross_source.{name}", inputs=shared, parameters=parameters)
        for name in variants
    ]
    tables = {name: f"segmentation_cross_source.{name}.per_image" for name in variants}
    select = node(
        select_segmentation_images,
        ["model_input_table", "params:segmentation_data"],
        "segmentation_images",
        name="select_segmentation_images",
    )
    report = [
        node(summarise_cross_source, tables, "segmentation_cross_source", name="summarise_cross_source"),
        node(collect_cross_source_images, tables, "segmentation_cross_source_images", name="collect_cross_source_images"),
    ]
    return pipeline([select]) + sum(per_variant, Pipeline([])) + pipeline(report)
