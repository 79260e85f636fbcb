"""Leave-one-source-out folds: train on every mask source but S, test on all of S.

As in the cross-dataset tables of lung segmentation papers, this measures what the
in-domain test split cannot: how a model trained in some hospitals does in another,
with its own scanner, framing, patients and disease. Each *variant* is a training
recipe (preprocessing and augmentation overrides on top of the main segmentation
settings), so recipes are compared on the same folds; choices of the main job are made
on this table and on the stress test, never on a test split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd

from covid_imaging.pipelines.preprocessing.nodes import preprocess_images
from covid_imaging.pipelines.segmentation.nodes import STRESS_TEST_DEFAULTS, train_segmentation
from covid_imaging.segmentation._params import merge_params
from covid_imaging.segmentation.inference import Loaders, opacity_transform, score_images

logger = logging.getLogger(__name__)

VARIANT_DEFAULTS: dict[str, Any] = {
    "description": "",
    "preprocessing": {},  # overrides of the `preprocessing` block
    "augmentation": {},  # overrides of the trained model's augmentation block
    "data": {},  # overrides of the trained model's data block (e.g. its input size)
}
CROSS_SOURCE_DEFAULTS: dict[str, Any] = {
    "model": "unet",  # the segmentation.<model> block trained in every fold
    "output_root": "data/04_feature/cross_source",
    "min_images_per_source": 10,  # sources with fewer masks are neither held out nor dropped
    "training": {},  # overrides of the model's training block, the same for every recipe
    "stress_test": dict(STRESS_TEST_DEFAULTS),
    # One model per fold and seed; null: the model's own data.seed only. Several seeds
    # show how much of a difference between recipes is the training's own spread.
    "seeds": None,
}


FREE_FORM_KEYS = ("variants", "training")  # checked against the blocks they override


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    checked = {key: value for key, value in params.items() if key not in FREE_FORM_KEYS}
    settings = merge_params(CROSS_SOURCE_DEFAULTS, checked, where="segmentation_cross_source")
    settings["training"] = dict(params.get("training") or {})
    return settings


def _variant(params: dict[str, Any], variant: str) -> dict[str, Any]:
    variants = params.get("variants") or {}
    if variant not in variants:
        raise ValueError(f"segmentation_cross_source.variants has no block {variant!r}; it has {sorted(variants)}.")
    recipe = dict(variants[variant] or {})
    unknown = sorted(set(recipe) - set(VARIANT_DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown segmentation_cross_source.variants.{variant} parameter(s) {unknown}; "
            f"expected some of {sorted(VARIANT_DEFAULTS)}."
        )
    # The overrides themselves are checked key by key against the blocks they change.
    return {key: recipe.get(key) or default for key, default in VARIANT_DEFAULTS.items()}


def variant_preprocessing(preprocessing_params: dict[str, Any], params: dict[str, Any], variant: str) -> dict[str, Any]:
    """The main preprocessing block with the variant's overrides, writing under the variant's folder."""
    overrides = _variant(params, variant)["preprocessing"]
    merged = merge_params(preprocessing_params, overrides, where=f"segmentation_cross_source.variants.{variant}.preprocessing")
    merged["output_root"] = f"{_settings(params)['output_root'].rstrip('/')}/{variant}"
    return merged


def preprocess_variant_images(
    segmentation_images: pd.DataFrame,
    manifest: pd.DataFrame,
    raw_files: Loaders,
    preprocessing_params: dict[str, Any],
    params: dict[str, Any],
    variant: str,
) -> dict[str, Callable[[], bytes]]:
    """The segmentation images (and masks) preprocessed as the variant says, written lazily."""
    rows = manifest[manifest["image_id"].isin(set(segmentation_images["image_id"]))]
    return preprocess_images(rows, raw_files, variant_preprocessing(preprocessing_params, params, variant))


def held_out_sources(images: pd.DataFrame, minimum: int) -> list[str]:
    """Sources with at least ``minimum`` masked images, sorted; each becomes one fold."""
    counts = images["source"].value_counts()
    return sorted(str(source) for source, count in counts.items() if count >= minimum)


def fold_tables(images: pd.DataFrame, held_out: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training table, test table) of one fold: train/validation splits of the other sources; all of ``held_out``."""
    others = images[(images["source"] != held_out) & images["split"].isin(["train", "validation"])]
    return others.reset_index(drop=True), images[images["source"] == held_out].reset_index(drop=True)


def run_cross_source_folds(
    segmentation_images: pd.DataFrame,
    variant_images: Loaders,
    raw_files: Loaders,
    segmentation_params: dict[str, Any],
    preprocessing_params: dict[str, Any],
    params: dict[str, Any],
    variant: str,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Train one model per held-out source on the variant's images; score it on that source.

    Returns one row per held-out image (native and model-size Dice/IoU, and the Dice
    with each synthetic opacity of the stress test) and MLflow metrics per fold.
    """
    settings = _settings(params)
    recipe = _variant(params, variant)
    preprocessing = variant_preprocessing(preprocessing_params, params, variant)
    root = preprocessing["output_root"]
    images = segmentation_images.copy()
    images["image_path"] = [f"{root}/images/{image_id}.png" for image_id in images["image_id"]]
    images["mask_path"] = [f"{root}/masks/{image_id}.png" for image_id in images["image_id"]]
    missing = [image_id for image_id in images["image_id"] if f"images/{image_id}" not in variant_images]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of variant {variant!r} missing under {root}, e.g. {missing[:3]}")
    model_params = segmentation_params[settings["model"]]
    augmentation = merge_params(
        model_params["augmentation"], recipe["augmentation"], where=f"segmentation_cross_source.variants.{variant}.augmentation"
    )
    data = merge_params(model_params["data"], recipe["data"], where=f"segmentation_cross_source.variants.{variant}.data")
    # Not merge_params: the model's training block is itself partial (merged over the
    # library defaults when the model is trained).
    training = {**model_params["training"], **settings["training"]}
    stress = merge_params(STRESS_TEST_DEFAULTS, settings["stress_test"], where="segmentation_cross_source.stress_test")
    seeds = training_seeds(settings["seeds"], int(data["seed"]))
    sources = held_out_sources(images, int(settings["min_images_per_source"]))
    if len(sources) < 2:
        raise ValueError(
            f"Cross-source evaluation needs at least two mask sources with >= {settings['min_images_per_source']} "
            f"images; found {images['source'].value_counts().to_dict()}."
        )
    tables, metrics = [], {}
    for held_out in sources:
        train_rows, test_rows = fold_tables(images, held_out)
        fold = []
        for seed in seeds:
            logger.info(
                "Cross-source %s: hold out %s (%d images), train on %s, seed %d", variant, held_out, len(test_rows),
                train_rows["source"].value_counts().to_dict(), seed,
            )
            seeded = {**data, "seed": seed}
            model, _history = train_segmentation(train_rows, model_params["model"], training, augmentation, seeded)
            per_image, _ = score_images(model, test_rows, seeded, model_params["postprocessing"], preprocessing, raw_files)
            for kind in stress["kinds"]:
                stressed, _ = score_images(
                    model, test_rows, seeded, model_params["postprocessing"],
                    transform=opacity_transform(kind, float(stress["strength"]), int(stress["seed"])),
                )
                per_image[f"dice_post_{kind}"] = stressed["dice_post"].to_numpy()
            per_image.insert(0, "seed", seed)
            per_image.insert(0, "held_out_source", held_out)
            per_image.insert(0, "variant", variant)
            per_image["train_sources"] = "+".join(sorted(train_rows["source"].unique()))
            per_image["input_size"] = int(data["image_size"])
            fold.append(per_image)
        fold_table = pd.concat(fold, ignore_index=True)
        tables.append(fold_table)
        seed_means = fold_table.groupby("seed")["dice_native_post"].mean()
        metrics[f"cross_dice_native_post_{held_out}"] = float(seed_means.mean())
        metrics[f"cross_dice_native_post_min_{held_out}"] = float(fold_table["dice_native_post"].min())
        if len(seeds) > 1:
            metrics[f"cross_dice_native_post_seed_std_{held_out}"] = float(seed_means.std())
        for kind in stress["kinds"]:
            metrics[f"cross_dice_post_{kind}_{held_out}"] = float(fold_table[f"dice_post_{kind}"].mean())
    logger.info("Cross-source %s: %s", variant, {key: round(value, 3) for key, value in metrics.items()})
    return pd.concat(tables, ignore_index=True), metrics


def training_seeds(seeds: Any, model_seed: int) -> list[int]:
    """The seeds each fold is trained with: the list given, or the model's own seed."""
    if seeds is None:
        return [model_seed]
    if (not isinstance(seeds, list | tuple) or not seeds
            or any(isinstance(seed, bool) or not isinstance(seed, int) for seed in seeds) or len(set(seeds)) != len(seeds)):
        raise ValueError(f"segmentation_cross_source.seeds must be null or a list of distinct integers; got {seeds!r}.")
    return list(seeds)


def summarise_cross_source(**per_image_tables: pd.DataFrame) -> pd.DataFrame:
    """One row per variant and held-out source: Dice mean ± std and minimum, stress-test Dice.

    With several seeds, each figure is the mean of the seeds' figures (the minimum: over
    every seed), and ``dice_native_seed_std`` is the spread of the seeds' mean Dice.
    """
    per_image = pd.concat(per_image_tables.values(), ignore_index=True)
    stress_columns = sorted(column for column in per_image.columns if column.startswith("dice_post_") and column != "dice_post_min")
    rows = []
    for (variant, held_out), frame in per_image.groupby(["variant", "held_out_source"], sort=False):
        by_seed = frame.groupby("seed")
        seed_means = by_seed["dice_native_post"].mean()
        rows.append(
            {
                "variant": variant,
                "held_out_source": held_out,
                "mask_convention": ",".join(sorted(frame["mask_convention"].unique())),
                "train_sources": frame["train_sources"].iloc[0],
                "input_size": int(frame["input_size"].iloc[0]),
                "n_images": int(by_seed.size().iloc[0]),
                "n_seeds": len(seed_means),
                "dice_native_mean": seed_means.mean(),
                "dice_native_seed_std": seed_means.std() if len(seed_means) > 1 else float("nan"),
                "dice_native_std": by_seed["dice_native_post"].std().mean(),
                "dice_native_min": frame["dice_native_post"].min(),
                "n_below_0.85": by_seed["dice_native_post"].apply(lambda dice: int((dice < 0.85).sum())).mean(),
                "iou_native_mean": by_seed["iou_native_post"].mean().mean(),
                "dice_native_raw_mean": by_seed["dice_native_raw"].mean().mean(),
                "dice_model_size_mean": by_seed["dice_post"].mean().mean(),
                **{f"{column}_mean": by_seed[column].mean().mean() for column in stress_columns},
            }
        )
    table = pd.DataFrame(rows)
    logger.info("Cross-source lung segmentation (native size, post-processed):\n%s", table.to_string(index=False, float_format="%.3f"))
    return table


def collect_cross_source_images(**per_image_tables: pd.DataFrame) -> pd.DataFrame:
    """Every held-out image's scores, all variants in one table."""
    return pd.concat(per_image_tables.values(), ignore_index=True)
