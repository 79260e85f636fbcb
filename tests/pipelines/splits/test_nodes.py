"""Splits: stratified by task/label, grouped by patient (no leakage), seeded, train-only undersampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covid_imaging.pipelines.splits.nodes import make_splits, split_rows, undersample_training_split

PARAMS = {"test_fraction": 0.1, "validation_fraction": 0.2, "n_bins": 10, "n_folds": 5, "seed": 7}


def synthetic_manifest(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Patients with 1–4 images each, imbalanced labels, two tasks, one shared patient id space."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(n_patients):
        label = rng.choice(["covid", "normal", "viral"], p=[0.5, 0.3, 0.2])
        task = "classification" if patient % 3 else "segmentation"
        for image in range(rng.integers(1, 5)):
            rows.append(
                {"image_id": f"p{patient}_{image}", "task": task, "label": label, "source": "s", "group_id": f"s:p{patient}"}
            )
    return pd.DataFrame(rows)


def test_no_group_is_in_two_splits_and_fractions_hold():
    manifest = synthetic_manifest()
    table = make_splits(manifest, PARAMS)
    assert (table.groupby("group_id")["split"].nunique() == 1).all()
    fractions = table["split"].value_counts(normalize=True)
    assert fractions["test"] == pytest.approx(0.1, abs=0.03)
    assert fractions["validation"] == pytest.approx(0.2, abs=0.03)
    assert len(table) == len(manifest) and set(table["image_id"]) == set(manifest["image_id"])


def test_stratified_by_label_within_each_task():
    table = make_splits(synthetic_manifest(600), PARAMS)
    for _, rows in table.groupby("task"):
        overall = rows["label"].value_counts(normalize=True)
        for split in ("train", "validation", "test"):
            in_split = rows[rows["split"] == split]["label"].value_counts(normalize=True)
            for label in overall.index:
                assert in_split.get(label, 0) == pytest.approx(overall[label], abs=0.08), (split, label)


def test_a_patient_shared_by_two_tasks_stays_in_one_split():
    manifest = synthetic_manifest()
    manifest.loc[manifest.index[:4], "group_id"] = "s:shared"
    manifest.loc[manifest.index[:2], "task"] = "segmentation"
    manifest.loc[manifest.index[2:4], "task"] = "classification"
    table = make_splits(manifest, PARAMS)
    assert table.loc[table["group_id"] == "s:shared", "split"].nunique() == 1


def test_kfold_covers_development_rows_only_and_keeps_groups_together():
    table = make_splits(synthetic_manifest(), PARAMS)
    assert (table.loc[table["split"] == "test", "cv_fold"] == -1).all()
    development = table[table["split"] != "test"]
    assert set(development["cv_fold"]) == set(range(5))
    assert (development.groupby("group_id")["cv_fold"].nunique() == 1).all()


def test_splits_are_seeded():
    manifest = synthetic_manifest()
    first, second = make_splits(manifest, PARAMS), make_splits(manifest, PARAMS)
    pd.testing.assert_frame_equal(first, second)
    other = make_splits(manifest, {**PARAMS, "seed": 8})
    assert not first["split"].equals(other["split"])


def test_80_20_design_with_12_5_percent_validation():
    table = make_splits(synthetic_manifest(400), {**PARAMS, "test_fraction": 0.2, "validation_fraction": 0.1})
    fractions = table["split"].value_counts(normalize=True)
    assert fractions["test"] == pytest.approx(0.2, abs=0.03)
    assert fractions["validation"] / (1 - fractions["test"]) == pytest.approx(0.125, abs=0.04)


def test_undersampling_balances_training_only_and_is_seeded():
    table = make_splits(synthetic_manifest(600), PARAMS)
    settings = {**PARAMS, "undersampling": {"enabled": True, "tasks": ["classification"]}}
    balanced = undersample_training_split(table, settings)
    train = balanced[(balanced["task"] == "classification") & (balanced["split"] == "train")]
    counts = train[train["in_training_sample"]]["label"].value_counts()
    assert counts.nunique() == 1  # every class down to the smallest
    others = balanced[(balanced["task"] != "classification") | (balanced["split"] != "train")]
    assert others["in_training_sample"].eq(others["split"] == "train").all()  # nothing else touched
    pd.testing.assert_frame_equal(balanced, undersample_training_split(table, settings))


def test_impossible_fractions_are_refused():
    with pytest.raises(ValueError, match="leave data for training"):
        make_splits(synthetic_manifest(), {**PARAMS, "test_fraction": 0.5, "validation_fraction": 0.5})


def test_rotations_test_every_group_once_and_rotation_zero_is_the_split():
    """Rotation r makes the r-th block of bins the test split and the next one validation:
    over n_bins / test bins rotations every row is tested exactly once, and a group stays
    whole in each rotation."""
    manifest = synthetic_manifest(n_patients=120)
    table = manifest.assign(stratum=manifest["task"] + "/" + manifest["label"])
    params = {"test_fraction": 0.2, "validation_fraction": 0.2, "n_bins": 5, "seed": 3}
    rotations = [split_rows(table, {**params, "rotation": r}) for r in range(5)]
    pd.testing.assert_frame_equal(rotations[0], split_rows(table, params))
    tested = pd.concat([rotated.loc[rotated["split"] == "test", "image_id"] for rotated in rotations])
    assert sorted(tested) == sorted(table["image_id"])  # each row once
    for current, following in zip(rotations, rotations[1:], strict=False):
        # this rotation's validation is the next rotation's test
        assert set(current.loc[current["split"] == "validation", "image_id"]) == set(
            following.loc[following["split"] == "test", "image_id"])
        assert (current.groupby("group_id")["split"].nunique() == 1).all()


def test_no_patient_of_the_shared_data_is_in_two_splits(shared_data):
    """Every ieee8023 patient of the metadata file (images in the manifest sources ieee8023
    and ieee8023_v7) sits in one split, with the shipped split settings."""
    import yaml

    from covid_imaging.pipelines.ingestion.groups import assign_group_ids
    from covid_imaging.pipelines.splits.nodes import make_splits
    from tests.conftest import PROJECT_ROOT

    manifest = pd.read_csv(shared_data / "manifest.csv", keep_default_na=False, dtype=str)
    metadata = pd.read_csv(shared_data / "ieee8023_subset_metadata.csv", keep_default_na=False, dtype=str)
    patients = dict(zip(metadata["path"], metadata["patientid"], strict=True))
    table = manifest.rename(columns={"path": "image_key"}).assign(image_id=lambda t: t["image_key"])
    table["group_id"] = assign_group_ids(table, patients)
    params = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters/splits.yml").read_text())["splits"]
    splits = make_splits(table, params).set_index("image_id")["split"]
    per_patient = pd.DataFrame({"patient": table["image_key"].map(patients), "split": splits[table["image_id"]].to_numpy()})
    per_patient = per_patient.dropna(subset=["patient"])
    assert per_patient["patient"].nunique() > 100
    crossing = per_patient.groupby("patient")["split"].nunique()
    assert not (crossing > 1).any(), list(crossing[crossing > 1].index)


def test_too_few_groups_for_a_training_split_is_a_clear_error():
    table = pd.DataFrame({"image_id": [f"i{k}" for k in range(20)], "task": "classification",
                          "label": ["a", "b"] * 10, "source": "s", "group_id": "one_run"})
    with pytest.raises(ValueError, match=r"the 1 patient/scan group\(s\) of 20 images leave no training images"):
        make_splits(table, {"test_fraction": 0.1, "validation_fraction": 0.2})
