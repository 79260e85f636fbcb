"""Leave-one-source-out folds: no source on both sides, and a tiny real run on shared data."""

from __future__ import annotations

import shutil

import mlflow
import pandas as pd
import pytest

from covid_imaging.pipelines.segmentation.pipeline import SEGMENTATION_MODELS
from covid_imaging.pipelines.segmentation_cross_source.nodes import (
    CROSS_SOURCE_DEFAULTS,
    cross_folds,
    fold_tables,
    held_out_sources,
    site_folds,
    summarise_cross_source,
    training_seeds,
)
from covid_imaging.pipelines.segmentation_cross_source.pipeline import CROSS_SOURCE_VARIANTS
from tests.conftest import run_kedro


def _images() -> pd.DataFrame:
    rows = []
    for source, n in (("a", 6), ("b", 5), ("c", 2)):
        for i in range(n):
            rows.append({"image_id": f"{source}{i}", "source": source, "split": ("train", "validation", "test")[i % 3]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("held_out", ["a", "b", "c"])
def test_a_fold_never_trains_on_the_source_it_tests(held_out):
    train, test = fold_tables(_images(), held_out)
    assert held_out not in set(train["source"])
    assert set(test["source"]) == {held_out}
    # every image of the held-out source is tested, whatever its split
    assert len(test) == int((_images()["source"] == held_out).sum())
    # the other sources train on their train + validation splits only, never their test split
    assert set(train["split"]) <= {"train", "validation"}
    assert not set(train["image_id"]) & set(test["image_id"])


def test_sources_too_small_are_not_folds():
    assert held_out_sources(_images(), minimum=5) == ["a", "b"]


def test_seeds_default_to_the_model_seed_and_must_be_distinct_integers():
    assert training_seeds(None, 42) == [42]
    assert training_seeds([1, 2, 3], 42) == [1, 2, 3]
    for bad in ([], [1, 1], [1.5], "42", [True]):
        with pytest.raises(ValueError, match="segmentation_cross_source.seeds"):
            training_seeds(bad, 42)


def _sited_images() -> pd.DataFrame:
    """Source ``v7`` from 6 sites (patient p5 filmed at two of them), source ``nlm`` from one."""
    rows = []
    for i in range(18):
        site, patient = f"site{i % 6}", f"p{i % 9}"
        rows.append({"image_id": f"v{i}", "source": "v7", "site": site, "group_id": f"v7:{patient}",
                     "split": ("train", "validation", "test")[i % 3]})
    for i in range(6):
        rows.append({"image_id": f"n{i}", "source": "nlm", "site": "nlm", "group_id": f"nlm:{i}",
                     "split": ("train", "validation", "test")[i % 3]})
    return pd.DataFrame(rows)


def test_site_folds_test_every_image_once_and_never_train_on_a_tested_site_or_patient():
    images = _sited_images()
    folds = site_folds(images, ["v7"], n_folds=3, minimum=5)
    assert [fold.name for fold in folds] == ["v7 sites 1/3", "v7 sites 2/3", "v7 sites 3/3"]
    tested = pd.concat([fold.test for fold in folds])
    assert sorted(tested["image_id"]) == sorted(images.loc[images["source"] == "v7", "image_id"])  # each once
    for fold in folds:
        trained_sites = set(fold.train.loc[fold.train["source"] == "v7", "site"])
        assert trained_sites and not trained_sites & set(fold.test["site"])
        assert not set(fold.train["group_id"]) & set(fold.test["group_id"])  # p5 is on one side only
        assert set(fold.train["split"]) <= {"train", "validation"}
        assert "nlm" in set(fold.train["source"]) and set(fold.test["source"]) == {"v7"}
    # a patient filmed at two sites: its films at a kept site leave training when it is tested
    p3 = images[images["group_id"] == "v7:p3"]
    assert p3["site"].nunique() == 2


def test_site_folds_can_leave_the_test_split_untested_and_still_out_of_training():
    images = _sited_images()
    folds = site_folds(images, ["v7"], n_folds=3, minimum=5, tested_splits=("train", "validation"))
    tested = pd.concat([fold.test for fold in folds])
    development = images[(images["source"] == "v7") & (images["split"] != "test")]
    assert sorted(tested["image_id"]) == sorted(development["image_id"])  # each once, no test-split image
    everything = site_folds(images, ["v7"], n_folds=3, minimum=5)
    for fold, full in zip(folds, everything, strict=True):
        pd.testing.assert_frame_equal(fold.train, full.train)  # the same models either way
    with pytest.raises(ValueError, match="tested_splits must be a non-empty list"):
        site_folds(images, ["v7"], n_folds=3, minimum=5, tested_splits=("holdout",))


def test_site_folds_name_what_is_missing():
    images = _sited_images()
    with pytest.raises(ValueError, match="source 'nlm' has 6 images from 1 sites; 3 folds need at least 3 sites"):
        site_folds(images, ["nlm"], n_folds=3, minimum=5)
    with pytest.raises(ValueError, match="site_column"):
        site_folds(images.drop(columns="site"), None, n_folds=3, minimum=5)
    assert {fold.held_out_source for fold in site_folds(images, None, n_folds=3, minimum=5)} == {"v7"}
    settings = {**CROSS_SOURCE_DEFAULTS, "min_images_per_source": 5, "hold_out": ["source", "site"],
                "site_folds": {**CROSS_SOURCE_DEFAULTS["site_folds"], "sources": ["v7"], "n_folds": 3}}
    assert [fold.hold_out for fold in cross_folds(images, settings)] == ["source", "source", "site", "site", "site"]
    with pytest.raises(ValueError, match="hold_out must be a non-empty list of"):
        cross_folds(images, {**settings, "hold_out": ["hospital"]})


def _scores(variant: str, held_out: str, seed: int, dice: list[float]) -> pd.DataFrame:
    return pd.DataFrame({
        "variant": variant, "held_out_source": held_out, "seed": seed, "mask_convention": "nlm",
        "train_sources": "b", "input_size": 128, "dice_native_post": dice, "iou_native_post": dice,
        "dice_native_raw": dice, "dice_post": dice, "dice_post_effusion": [d - 0.1 for d in dice],
    })


def test_summary_over_seeds_averages_each_seed_and_reports_their_spread():
    robust = pd.concat([_scores("robust", "a", 1, [0.9, 0.7]), _scores("robust", "a", 2, [0.8, 0.84])])
    other = _scores("other", "a", 1, [0.95, 0.95])
    table = summarise_cross_source(robust=robust, other=other).set_index("variant")
    row = table.loc["robust"]
    assert (row["n_images"], row["n_seeds"]) == (2, 2)
    assert row["dice_native_mean"] == pytest.approx(0.81)  # seeds' means 0.80 and 0.82
    assert row["dice_native_seed_std"] == pytest.approx(0.0141421, abs=1e-6)
    assert row["dice_native_min"] == pytest.approx(0.7)
    assert row["n_below_0.85"] == pytest.approx(1.5)  # 1 image at seed 1, 2 at seed 2
    assert row["dice_post_effusion_mean"] == pytest.approx(0.71)
    assert table.loc["other", "n_seeds"] == 1 and pd.isna(table.loc["other", "dice_native_seed_std"])


@pytest.mark.slow
def test_cross_source_pipeline_on_a_slice_of_shared_data(kedro_project, shared_data, tmp_path):
    manifest = pd.read_csv(shared_data / "manifest.csv", keep_default_na=False)
    chosen = pd.concat(
        [manifest[(manifest["task"] == "segmentation") & (manifest["source"] == source)].head(12)
         for source in ("shenzhen", "ieee8023_v7")]
    )
    raw = tmp_path / "raw"
    for relative in list(chosen["path"]) + list(chosen["mask_path"]):
        (raw / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / relative, raw / relative)
    chosen.to_csv(raw / "manifest.csv", index=False)
    shutil.copy(shared_data / "ieee8023_subset_metadata.csv", raw)
    params = {
        "raw_images_path": str(raw),
        "preprocessing.resize.size": 64,
        "segmentation_cross_source.min_images_per_source": 5,
        "segmentation_cross_source.stress_test.kinds": ["effusion"],
        "segmentation_cross_source.seeds": [3, 4],
    }
    for model in SEGMENTATION_MODELS:
        params |= {
            f"segmentation.{model}.data.image_size": 32,
            f"segmentation.{model}.data.batch_size": 8,
            f"segmentation.{model}.training.epochs": 1,
            f"segmentation.{model}.model.base_filters": 4,
        }
    run_kedro(kedro_project, "segmentation_cross_source", env="shared_data", params=params)

    reports = kedro_project / "data/08_reporting/raw"  # named after the raw folder
    table = pd.read_csv(reports / "segmentation_cross_source.csv")
    assert set(table["variant"]) == set(CROSS_SOURCE_VARIANTS) and set(table["hold_out"]) == {"source"}
    assert set(table["held_out_source"]) == {"shenzhen", "ieee8023_v7"}
    for row in table.itertuples():
        assert row.held_out_source not in row.train_sources.split("+")
        assert row.n_images == 12
    assert set(table.loc[table["held_out_source"] == "shenzhen", "mask_convention"]) == {"nlm"}
    # a recipe's data block overrides the model's: the input-size recipe trains at 160 px
    sizes = table.groupby("variant")["input_size"].unique().map(list).to_dict()
    assert sizes == {variant: [160 if variant == "input_160" else 32] for variant in CROSS_SOURCE_VARIANTS}
    assert table[["dice_native_mean", "dice_native_min", "dice_post_effusion_mean"]].apply(lambda c: c.between(0, 1)).all().all()
    images = pd.read_csv(reports / "segmentation_cross_source_images.csv")
    assert len(images) == len(CROSS_SOURCE_VARIANTS) * 24 * 2  # every held-out image once per seed
    assert (table["n_seeds"] == 2).all()
    # the seed reaches the training: the two seeds' models score the same images differently
    robust_scores = images[images["variant"] == "robust"].pivot(index="image_id", columns="seed", values="dice_post")
    assert not robust_scores[3].equals(robust_scores[4])
    # each recipe's per-image table is kept, so one recipe can be re-run alone
    robust = pd.read_csv(reports / "cross_source" / "robust_per_image.csv")
    pd.testing.assert_frame_equal(robust, images[images["variant"] == "robust"].reset_index(drop=True))
    # the reference chain was really preprocessed differently from the robust recipe
    feature = kedro_project / "data/04_feature/raw/cross_source"
    some_image = sorted((feature / "robust" / "images").rglob("*.png"))[0].relative_to(feature / "robust")
    assert (feature / "robust" / some_image).read_bytes() != (feature / "reference_chain" / some_image).read_bytes()

    mlflow.set_tracking_uri(f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    names = {run.info.run_name: run for run in runs}
    for variant in CROSS_SOURCE_VARIANTS:
        run = names[f"segmentation_cross_source.{variant}"]
        assert "cross_dice_native_post_shenzhen" in run.data.metrics

    # Site folds of one recipe on the same data: 3 folds of the V7 images grouped by
    # hospital (the ieee8023 metadata's `location`, 7 sites among these 12 images)
    params |= {"segmentation_cross_source.seeds": None, "segmentation_cross_source.hold_out": ["site"],
               "segmentation_cross_source.site_folds": {"sources": ["ieee8023_v7"], "n_folds": 3}}
    run_kedro(kedro_project, "segmentation_cross_source", env="shared_data", params=params,
              namespaces=["segmentation_cross_source.robust"])
    sites = pd.read_csv(reports / "cross_source" / "robust_per_image.csv")
    assert set(sites["hold_out"]) == {"site"} and set(sites["held_out_source"]) == {"ieee8023_v7"}
    assert sorted(sites["image_id"]) == sorted(images.loc[images["held_out_source"] == "ieee8023_v7", "image_id"].unique())
    assert sites["fold"].nunique() == 3 and sites["site"].nunique() == 7
    assert sites.groupby("site")["fold"].nunique().max() == 1  # a hospital is held out by one fold only
    assert set(sites["train_sources"]) == {"ieee8023_v7+shenzhen"}  # the other hospitals of V7 train too
    summary = summarise_cross_source(robust=sites)
    assert summary[["hold_out", "n_images", "n_folds", "n_sites"]].values.tolist() == [["site", 12, 3, 7]]
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time DESC"])
    latest = next(run for run in runs if run.info.run_name == "segmentation_cross_source.robust")
    assert "cross_site_dice_native_post_ieee8023_v7" in latest.data.metrics


def test_fold_training_overrides_merge_key_by_key():
    from covid_imaging.pipelines.segmentation_cross_source.nodes import fold_training_params

    merged = fold_training_params({"epochs": 26, "reduce_lr": {"patience": 3}}, {"epochs": 12, "reduce_lr": {"factor": 0.2}})
    assert merged["epochs"] == 12
    assert merged["reduce_lr"]["patience"] == 3 and merged["reduce_lr"]["factor"] == 0.2
    with pytest.raises(ValueError, match=r"segmentation_cross_source.training.reduce_lr.factr"):
        fold_training_params({}, {"reduce_lr": {"factr": 0.2}})


def test_source_folds_can_leave_the_test_split_untested():
    from covid_imaging.pipelines.segmentation_cross_source.nodes import source_folds

    images = pd.DataFrame({"image_id": [f"i{k}" for k in range(24)], "source": ["a"] * 12 + ["b"] * 12,
                           "split": ["train", "validation", "test"] * 8, "group_id": [f"p{k}" for k in range(24)]})
    for fold in source_folds(images, 5, ("train", "validation")):
        assert set(fold.test["split"]) == {"train", "validation"} and len(fold.test) == 8
        assert set(fold.train["split"]) == {"train", "validation"}
    assert all(len(fold.test) == 12 for fold in source_folds(images, 5))
    with pytest.raises(ValueError, match="source_folds.tested_splits must be a non-empty list"):
        source_folds(images, 5, ())
