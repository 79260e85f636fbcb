"""Leave-one-source-out folds: train on every mask source but S, test on all of S; and
leave-sites-out folds within a source whose images come from many hospitals.

As in the cross-dataset tables of lung segmentation papers, this measures what the
in-domain test split cannot: how a model trained in some hospitals does in another,
with its own scanner, framing, patients and disease. A source fold also crosses mask
conventions when each source has its own; a site fold (``hold_out: [site]``) keeps the
held-out source's convention in training and holds out whole acquisition sites (the
manifest's ``site``, from ``ingestion.patient_metadata.site_column``). Each *variant* is a training
recipe (preprocessing and augmentation overrides on top of the main segmentation
settings), so recipes are compared on the same folds. By default a fold scores every
held-out image, the main job's test-split images of that source included;
``tested_splits: [train, validation]`` (per fold kind) keeps them out of whatever is
chosen on these folds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sklearn.model_selection import GroupKFold

from covid_imaging.pipelines.preprocessing.nodes import preprocess_images
from covid_imaging.pipelines.segmentation.nodes import STRESS_TEST_DEFAULTS, train_segmentation
from covid_imaging.segmentation._params import merge_params
from covid_imaging.segmentation.inference import Loaders, opacity_transform, score_images
from covid_imaging.segmentation.training import resolve_segmentation_params

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
    # Which folds: source (leave one source out) and/or site (within a source, hold out
    # whole acquisition sites: the other sites and the other sources train the model).
    "hold_out": ["source"],
    # Source folds: which of the held-out source's images are scored ([train, validation]
    # keeps the main job's test split out of anything chosen on these folds).
    "source_folds": {"tested_splits": ["train", "validation", "test"]},
    # Site folds: the sources split by site (null: every source with at least
    # min_images_per_source images and n_folds sites), in n_folds folds grouped by site.
    # tested_splits: which of the held-out sites' images are scored ([train, validation]
    # keeps the main job's test split out of anything chosen on these folds).
    "site_folds": {"sources": None, "n_folds": 5, "tested_splits": ["train", "validation", "test"]},
}
HOLD_OUT_KINDS = ("source", "site")


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


def fold_training_params(model_training: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The model's (partial) training block completed by the library defaults, then the
    folds' overrides key by key: ``reduce_lr: {factor: 0.2}`` keeps the model's patience."""
    return merge_params(resolve_segmentation_params(model_training), overrides, where="segmentation_cross_source.training")


def held_out_sources(images: pd.DataFrame, minimum: int) -> list[str]:
    """Sources with at least ``minimum`` masked images, sorted; each becomes one fold."""
    counts = images["source"].value_counts()
    return sorted(str(source) for source, count in counts.items() if count >= minimum)


SPLITS = ("train", "validation", "test")


def checked_tested_splits(tested_splits: Any, where: str) -> tuple[str, ...]:
    """``tested_splits`` as a tuple; a non-empty list of train, validation, test."""
    unknown = sorted(set(tested_splits or ()) - set(SPLITS))
    if not tested_splits or unknown:
        raise ValueError(f"segmentation_cross_source.{where}.tested_splits must be a non-empty list of "
                         f"train, validation, test; got {tested_splits!r}")
    return tuple(tested_splits)


def fold_tables(
    images: pd.DataFrame, held_out: str, tested_splits: tuple[str, ...] = SPLITS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training table, test table) of one fold: train/validation splits of the other
    sources; the images of ``held_out`` in ``tested_splits``."""
    tested_splits = checked_tested_splits(tested_splits, "source_folds")
    others = images[(images["source"] != held_out) & images["split"].isin(["train", "validation"])]
    tested = images[(images["source"] == held_out) & images["split"].isin(tested_splits)]
    return others.reset_index(drop=True), tested.reset_index(drop=True)


@dataclass(frozen=True)
class Fold:
    """One held-out set and the images that train its model."""

    hold_out: str  # "source": every image of the source; "site": every image of some of its sites
    held_out_source: str
    name: str  # the source, or "<source> sites <k>/<n>"
    train: pd.DataFrame
    test: pd.DataFrame


def source_folds(images: pd.DataFrame, minimum: int, tested_splits: tuple[str, ...] = SPLITS) -> list[Fold]:
    """One fold per source with at least ``minimum`` images (:func:`fold_tables`)."""
    sources = held_out_sources(images, minimum)
    if len(sources) < 2:
        raise ValueError(
            f"Cross-source evaluation needs at least two mask sources with >= {minimum} images; "
            f"found {images['source'].value_counts().to_dict()}."
        )
    return [Fold("source", source, source, *fold_tables(images, source, tested_splits)) for source in sources]


def site_folds(
    images: pd.DataFrame, sources: list[str] | None, n_folds: int, minimum: int,
    tested_splits: tuple[str, ...] = ("train", "validation", "test"),
) -> list[Fold]:
    """``n_folds`` folds per source, grouped by ``site``: each tests the images of its sites
    (those in ``tested_splits``) with a model trained on the train/validation splits of the
    other sources and of the source's other sites. A patient is never on both sides (a film
    whose patient is held out is left out of training), and every image is tested once."""
    tested_splits = checked_tested_splits(tested_splits, "site_folds")
    if "site" not in images:
        raise ValueError("segmentation_cross_source.hold_out: site needs the `site` column of model_input_table "
                         "(from the manifest); run `kedro run --pipelines=data_preparation` again, with "
                         "ingestion.patient_metadata.site_column set")
    if sources is None:
        counts = images.groupby("source")["site"].agg(["size", "nunique"])
        sources = sorted(str(source) for source, row in counts.iterrows()
                         if row["size"] >= minimum and row["nunique"] >= n_folds)
        if not sources:
            raise ValueError(f"No source has >= {minimum} images from >= {n_folds} sites "
                             f"(sites per source: {counts['nunique'].to_dict()}); site folds need one")
    development = images[images["split"].isin(["train", "validation"])]
    folds = []
    for source in sources:
        rows = images[images["source"] == source].reset_index(drop=True)
        n_sites = rows["site"].nunique()
        if n_sites < n_folds:  # also a source with no image
            raise ValueError(f"segmentation_cross_source.site_folds: source {source!r} has {len(rows)} images from "
                             f"{n_sites} sites; {n_folds} folds need at least {n_folds} sites")
        for k, (_, test_index) in enumerate(GroupKFold(n_splits=n_folds).split(rows, groups=rows["site"])):
            held_out_rows = rows.iloc[test_index]
            held_out = (development["source"] == source) & development["site"].isin(set(held_out_rows["site"]))
            train = development[~held_out & ~development["group_id"].isin(set(held_out_rows["group_id"]))]
            test = held_out_rows[held_out_rows["split"].isin(tested_splits)].reset_index(drop=True)
            folds.append(Fold("site", source, f"{source} sites {k + 1}/{n_folds}", train.reset_index(drop=True), test))
    return folds


def cross_folds(images: pd.DataFrame, settings: dict[str, Any]) -> list[Fold]:
    """The folds ``settings["hold_out"]`` asks for, source folds first."""
    kinds = settings["hold_out"]
    if not isinstance(kinds, list | tuple) or not kinds or set(kinds) - set(HOLD_OUT_KINDS):
        raise ValueError(f"segmentation_cross_source.hold_out must be a non-empty list of {list(HOLD_OUT_KINDS)}; "
                         f"got {kinds!r}")
    minimum = int(settings["min_images_per_source"])
    folds = (source_folds(images, minimum, tuple(settings["source_folds"]["tested_splits"]))
             if "source" in kinds else [])
    if "site" in kinds:
        site = settings["site_folds"]
        folds += site_folds(images, site["sources"], int(site["n_folds"]), minimum, tuple(site["tested_splits"]))
    return folds


def run_cross_source_folds(
    segmentation_images: pd.DataFrame,
    variant_images: Loaders,
    raw_files: Loaders,
    segmentation_params: dict[str, Any],
    preprocessing_params: dict[str, Any],
    params: dict[str, Any],
    variant: str,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Train one model per fold (:func:`cross_folds`) on the variant's images; score it on
    the fold's held-out images.

    Returns one row per held-out image and seed (native and model-size Dice/IoU, and the
    Dice with each synthetic opacity of the stress test) and MLflow metrics per held-out
    source (``cross_...``) and per source split by site (``cross_site_...``).
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
    training = fold_training_params(model_params["training"], settings["training"])
    stress = merge_params(STRESS_TEST_DEFAULTS, settings["stress_test"], where="segmentation_cross_source.stress_test")
    seeds = training_seeds(settings["seeds"], int(data["seed"]))
    tables = []
    for fold in cross_folds(images, settings):
        train_rows, test_rows = fold.train, fold.test
        for seed in seeds:
            logger.info(
                "Cross-source %s: hold out %s (%d images), train on %s, seed %d", variant, fold.name, len(test_rows),
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
            per_image.insert(0, "fold", fold.name)
            per_image.insert(0, "held_out_source", fold.held_out_source)
            per_image.insert(0, "hold_out", fold.hold_out)
            per_image.insert(0, "variant", variant)
            if "site" in test_rows:  # a model_input_table written before `site` existed still runs source folds
                per_image["site"] = per_image["image_id"].map(test_rows.set_index("image_id")["site"])
            per_image["train_sources"] = "+".join(sorted(train_rows["source"].unique()))
            per_image["input_size"] = int(data["image_size"])
            tables.append(per_image)
    table = pd.concat(tables, ignore_index=True)
    metrics = {}
    for (hold_out, held_out), frame in table.groupby(["hold_out", "held_out_source"], sort=True):
        prefix = "cross" if hold_out == "source" else "cross_site"
        seed_means = frame.groupby("seed")["dice_native_post"].mean()
        metrics[f"{prefix}_dice_native_post_{held_out}"] = float(seed_means.mean())
        metrics[f"{prefix}_dice_native_post_min_{held_out}"] = float(frame["dice_native_post"].min())
        if len(seeds) > 1:
            metrics[f"{prefix}_dice_native_post_seed_std_{held_out}"] = float(seed_means.std())
        for kind in stress["kinds"]:
            metrics[f"{prefix}_dice_post_{kind}_{held_out}"] = float(frame[f"dice_post_{kind}"].mean())
    logger.info("Cross-source %s: %s", variant, {key: round(value, 3) for key, value in metrics.items()})
    return table, metrics


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
    if "hold_out" not in per_image:  # tables written before site folds: source folds only
        per_image = per_image.assign(hold_out="source", fold=per_image["held_out_source"])
    stress_columns = sorted(column for column in per_image.columns if column.startswith("dice_post_") and column != "dice_post_min")
    rows = []
    for (variant, hold_out, held_out), frame in per_image.groupby(["variant", "hold_out", "held_out_source"], sort=False):
        by_seed = frame.groupby("seed")
        seed_means = by_seed["dice_native_post"].mean()
        rows.append(
            {
                "variant": variant,
                "hold_out": hold_out,
                "held_out_source": held_out,
                "mask_convention": ",".join(sorted(frame["mask_convention"].unique())),
                # every source that trained some fold (a site fold also trains on its own source)
                "train_sources": "+".join(sorted({name for names in frame["train_sources"].unique() for name in names.split("+")})),
                "n_folds": frame["fold"].nunique(),
                "n_sites": frame["site"].nunique() if "site" in frame else float("nan"),
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
