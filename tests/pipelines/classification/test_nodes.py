"""Lung masking, shortcut-audit and seed-selection nodes on hand-made inputs."""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from covid_imaging.imaging.io import decode_gray, encode_png
from covid_imaging.pipelines.classification import pipeline as classification_pipeline
from covid_imaging.pipelines.classification.nodes import (
    CLASSIFICATION_DATA_DEFAULTS,
    _train_over_seeds,
    audit_shortcuts,
    checked_data,
    compare_paired,
    mask_lungs,
    summarise_seeds,
)
from covid_imaging.pipelines.classification.pipeline import xray_model_template
from covid_imaging.registry import load_registry
from tests.conftest import chest_like_image

SIZE = 64
LUNGS = np.zeros((SIZE, SIZE), np.float32)
LUNGS[12:52, 8:28] = 1.0
LUNGS[12:52, 36:56] = 1.0
PARAMS = {
    "batch_size": 2,
    "crop_to_bbox": True,
    "margin_px": 2,
    "min_lung_area_fraction": 0.05,
    "postprocessing": {"reference_size": 64, "local_threshold": {"enabled": False},
                       "area_filter": {"enabled": True, "min_area_px": 50}},
}


def fixed_lung_model() -> keras.Model:
    """A stand-in segmentation model that always predicts the same two lungs."""
    inputs = keras.Input((32, 32, 1))
    lungs = keras.ops.convert_to_tensor(LUNGS[::2, ::2][None, ..., None] * 0.9 + 0.05)
    outputs = keras.layers.Lambda(lambda x: keras.ops.zeros_like(x) + lungs)(inputs)
    return keras.Model(inputs, outputs)


@pytest.fixture
def images():
    table = pd.DataFrame({"image_id": ["a", "b"]})
    loaders = {f"images/{i}": (lambda i=i: encode_png(chest_like_image((SIZE, SIZE), seed=ord(i)))) for i in "ab"}
    return table, loaders


def test_mask_lungs_writes_variants_and_reports_area(images):
    table, loaders = images
    outputs, report = mask_lungs(table, loaders, fixed_lung_model(), PARAMS)
    assert report["lung_area_fraction"].iloc[0] == pytest.approx(LUNGS.mean(), abs=0.05)
    assert not report["excluded"].any()
    assert set(outputs) == {f"{kind}/{i}" for kind in ("masks", "lungs", "lungs_mask", "lungless") for i in "ab"}
    mask = decode_gray(outputs["masks/a"]()) > 127
    lungless = decode_gray(outputs["lungless/a"]())
    assert (lungless[mask] == 0).all() and lungless[~mask].any()
    lungs_mask = decode_gray(outputs["lungs_mask/a"]())
    assert set(np.unique(lungs_mask)) == {0, 255} and (lungs_mask > 0).mean() > LUNGS.mean()  # cropped: lungs fill more
    lungs = decode_gray(outputs["lungs/a"]())
    near_lungs = cv2.dilate(lungs_mask, np.ones((3, 3), np.uint8), iterations=2) > 0  # interpolation at the border
    assert (lungs[~near_lungs] == 0).all() and lungs[lungs_mask > 0].any()


def test_images_with_too_little_lung_are_excluded_with_a_reason(images):
    table, loaders = images
    outputs, report = mask_lungs(table, loaders, fixed_lung_model(), {**PARAMS, "min_lung_area_fraction": 0.9})
    assert report["excluded"].all()
    assert report["reason"].str.contains("predicted lung area").all()
    assert not any(key.startswith("lungs/") for key in outputs)


def test_shortcut_audit_says_so_plainly_when_the_lungless_model_beats_chance():
    real = {"test_accuracy": 0.9, "test_balanced_accuracy": 0.88}
    lungless = {"test_accuracy": 0.8, "test_balanced_accuracy": 0.78}
    audit = audit_shortcuts(real, lungless, {"n_classes": 3, "chance_margin": 0.1})
    assert audit["lungless_above_chance"] and "without seeing the lungs" in audit["verdict"]
    at_chance = audit_shortcuts(real, {"test_accuracy": 0.35, "test_balanced_accuracy": 0.34}, {"n_classes": 3, "chance_margin": 0.1})
    assert not at_chance["lungless_above_chance"]


def test_shortcut_audit_chance_level_comes_from_the_audited_models_classes():
    real = {"test_accuracy": 0.9, "test_balanced_accuracy": 0.88}
    lungless = {"test_accuracy": 0.6, "test_balanced_accuracy": 0.6}
    three = audit_shortcuts(real, lungless, {"chance_margin": 0.1}, {"classes": ["normal", "bacterial", "covid"]})
    two = audit_shortcuts(real, lungless, {"chance_margin": 0.1}, {"classes": ["normal", "covid"]})
    assert three["chance_level"] == pytest.approx(1 / 3) and three["lungless_above_chance"]
    assert two["chance_level"] == pytest.approx(0.5) and not two["lungless_above_chance"]


# ---------------------------------------------------------------- seeds


def brightness_classifier(direction: float) -> keras.Model:
    """A stand-in classifier of (non_covid, covid) by mean brightness: ``direction`` 1
    calls bright images covid, -1 calls them non_covid, 0 says non_covid for everything."""
    inputs = keras.Input((16, 16, 1))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(2)(mean)
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    model.layers[2].set_weights([np.array([[-direction, direction]], np.float32) * 20,
                                 np.array([10 * direction + 1e-3, -10 * direction], np.float32)])
    return model


def test_the_model_is_the_seed_best_on_validation_and_every_seed_is_reported(tmp_path):
    rows = []
    for split in ("train", "validation", "test"):
        for k in range(4):
            label = ("non_covid", "covid")[k % 2]
            path = tmp_path / f"{split}{k}.png"
            cv2.imwrite(str(path), np.full((16, 16), 230 if label == "covid" else 20, np.uint8))
            rows.append({"image_id": f"{split}{k}", "label": label, "split": split, "image_path": str(path),
                         "default_variant": "whole", "in_training_sample": True})
    inputs = pd.DataFrame(rows)
    data = checked_data({"image_size": 16, "batch_size": 4, "classes": ["non_covid", "covid"], "image_variant": "whole",
                         "seed": 42})
    directions = {42: 0.0, 43: 1.0, 44: -1.0}  # validation balanced accuracy 0.5, 1.0, 0.0

    def train_once(seeded):
        return brightness_classifier(directions[seeded["seed"]]), {"trained_seed": [seeded["seed"]]}

    model, history, predictions = _train_over_seeds(train_once, inputs, data, {"n_seeds": 3})
    assert history == {"trained_seed": [43]}
    assert model.predict(np.full((1, 16, 16, 1), 0.9, np.float32), verbose=0).argmax() == 1
    assert set(predictions["split"]) == {"validation", "test"} and sorted(set(predictions["seed"])) == [42, 43, 44]
    summary = summarise_seeds(predictions, data, {"n_seeds": 3})
    assert summary["selected_seed"] == 43
    assert [summary[f"validation_balanced_accuracy_seed{seed}"] for seed in (42, 43, 44)] == [0.5, 1.0, 0.0]
    assert [summary[f"test_balanced_accuracy_seed{seed}"] for seed in (42, 43, 44)] == [0.5, 1.0, 0.0]
    assert summary["test_balanced_accuracy_seed_mean"] == pytest.approx(0.5)

    _, first_history, _ = _train_over_seeds(train_once, inputs, data, {"n_seeds": 3, "select_seed": "first"})
    assert first_history == {"trained_seed": [42]}
    assert summarise_seeds(predictions, data, {"n_seeds": 3, "select_seed": "first"})["selected_seed"] == 42
    with pytest.raises(ValueError, match="select_seed must be 'validation' or 'first', got 'test'"):
        _train_over_seeds(train_once, inputs, data, {"n_seeds": 3, "select_seed": "test"})


def _test_predictions(correct: list[bool], classes: list[str]) -> pd.DataFrame:
    """One test image per entry, two per patient; the prediction right or wrong as told."""
    labels = [classes[i % len(classes)] for i in range(len(correct))]
    predicted = [label if ok else classes[(classes.index(label) + 1) % len(classes)]
                 for label, ok in zip(labels, correct, strict=True)]
    return pd.DataFrame({"image_id": [f"i{i}" for i in range(len(correct))], "source": "s", "label": labels,
                         "predicted": predicted,
                         **{f"p_{name}": [0.9 if p == name else 0.05 for p in predicted] for name in classes}})


def _seed_rows(predictions: pd.DataFrame, seed: int) -> pd.DataFrame:
    return predictions.drop(columns=["source", "predicted"]).assign(split="test", seed=seed)


def test_paired_comparison_reports_the_difference_its_interval_and_each_seed():
    classes = ["normal", "bacterial", "covid"]
    n = 60
    model = _test_predictions([True] * n, classes)  # right on every image
    baseline = _test_predictions([i % 4 != 0 for i in range(n)], classes)  # wrong on every fourth
    inputs = pd.DataFrame({"image_id": model["image_id"], "group_id": [f"p{i // 2}" for i in range(n)]})
    data, evaluation = {"classes": classes, "seed": 0}, {"n_bootstrap": 200}
    seeds_model = pd.concat([_seed_rows(model, 42), _seed_rows(baseline, 43)])  # ahead, then level
    seeds_baseline = pd.concat([_seed_rows(baseline, 42), _seed_rows(baseline, 43), _seed_rows(model, 44)])

    result = compare_paired(model, baseline, seeds_model, seeds_baseline, inputs, data, evaluation,
                            model="m2", baseline="m1")
    assert result["difference"] == pytest.approx(0.25) and result["n_test"] == n and result["n_clusters"] == n // 2
    assert 0 < result["ci_low"] < 0.25 < result["ci_high"] < 0.45
    assert result["verdict"].startswith("m2 is above m1: +0.250 [")
    assert (result["difference_seed42"], result["difference_seed43"]) == (pytest.approx(0.25), 0.0)
    assert "difference_seed44" not in result and result["seeds_model_ahead"] == 1  # seed 44: baseline only

    reversed_ = compare_paired(baseline, model, seeds_baseline, seeds_model, inputs, data, evaluation,
                               model="m1", baseline="m2")
    assert reversed_["verdict"].startswith("m1 is below m2")
    level = compare_paired(model, model, seeds_model, seeds_model, inputs, data, evaluation, model="a", baseline="b")
    assert level["verdict"].startswith("undecided") and level["difference"] == 0
    with pytest.raises(ValueError, match="not tested on the same images"):
        compare_paired(model, baseline.iloc[:-1], seeds_model, seeds_baseline, inputs, data, evaluation,
                       model="m2", baseline="m1")


@pytest.mark.parametrize(("data", "message"), [
    ({"undersampel": False}, r"Unknown data parameter 'undersampel' \(data\.undersampel\)"),
    ({"classes": None}, r"data\.classes must be set"),
])
def test_a_classifier_data_block_with_a_typo_fails_before_training(data, message):
    # a misspelt key would otherwise be ignored: the model would train undersampled
    template = xray_model_template(None)
    check = next(n for n in template.nodes if n.name == "check_data")
    assert template.nodes[0] is check  # the head node: training waits for it
    with pytest.raises(ValueError, match=message):
        check.run({"params:data": {"image_size": 16, "classes": ["a", "b"], **data}})


def test_every_classifier_node_reads_the_checked_data_block_with_every_key_set():
    pipe = classification_pipeline.create_pipeline()
    raw = [n.name for n in pipe.nodes if any(i.endswith(".data") and i.startswith("params:") for i in n.inputs)]
    assert sorted(raw) == sorted(f"{spec.namespace}.check_data" for spec in load_registry().models("cxr_classification"))
    readers = [n for n in pipe.nodes if any(i.endswith(".data") for i in n.inputs) and not n.name.endswith("check_data")]
    # train, evaluate, Grad-CAM, seed summary per model; the paired comparisons and audits
    assert len(readers) == 4 * len(load_registry().names("cxr_classification")) + 3 + 2
    checked = checked_data({"image_size": 64, "classes": ["normal", "covid"]})
    assert set(checked) == set(CLASSIFICATION_DATA_DEFAULTS) and checked["undersample"] is True


def test_k_fold_scores_stay_in_the_history_whichever_seed_is_kept(monkeypatch):
    """The k-fold protocol runs with the first seed only; when validation keeps another
    seed, its fold scores must still reach training_history.json and MLflow."""
    from covid_imaging.pipelines.classification import nodes

    classes = ["normal", "covid"]
    inputs = pd.DataFrame({"image_id": [f"i{k}" for k in range(8)], "label": classes * 4,
                           "split": ["validation"] * 4 + ["test"] * 4})
    data = {**CLASSIFICATION_DATA_DEFAULTS, "classes": classes, "cross_validation": True, "seed": 42}

    def train_once(seeded):
        history = {"loss": [1.0]}
        if seeded["cross_validation"]:
            history["cv_fold_val_accuracy"] = [0.6, 0.7]
        return ("good" if seeded["seed"] == 43 else "bad"), history

    def predict(model, rows, seeded):  # seed 43 gets validation right, seed 42 wrong
        right = rows["label"].map(classes.index).to_numpy()
        chosen = right if model == "good" else 1 - right
        return np.eye(2)[chosen]

    monkeypatch.setattr(nodes, "_predict", predict)
    model, history, _ = nodes._train_over_seeds(train_once, inputs, data, {"n_seeds": 2})
    assert model == "good"
    assert history["cv_fold_val_accuracy"] == [0.6, 0.7]


def test_k_fold_is_refused_for_a_transfer_model_rather_than_ignored():
    from covid_imaging.pipelines.classification.nodes import transfer_and_fine_tune

    data = {**CLASSIFICATION_DATA_DEFAULTS, "classes": ["normal", "covid"], "cross_validation": True}
    with pytest.raises(ValueError, match="data.cross_validation is not wired for transfer models"):
        transfer_and_fine_tune(pd.DataFrame(), None, {}, {}, data)


def test_k_fold_trains_each_fold_on_undersampled_images_like_the_final_model(monkeypatch):
    from covid_imaging.pipelines.classification import nodes

    classes = ["normal", "covid"]
    labels = ["normal"] * 30 + ["covid"] * 10
    inputs = pd.DataFrame({"image_id": [f"i{k}" for k in range(40)], "label": labels, "split": "train",
                           "cv_fold": [k % 2 for k in range(40)], "in_training_sample": True})
    data = {**CLASSIFICATION_DATA_DEFAULTS, "classes": classes, "undersample": True, "seed": 1}
    trained_on = []

    def fit(model, model_params, training, train_ds, validation_ds, train_labels):
        trained_on.append(np.bincount(train_labels, minlength=2).tolist())
        return model, {"val_loss": [0.5], "val_accuracy": [0.7]}

    monkeypatch.setattr(nodes, "_fit", fit)
    monkeypatch.setattr(nodes, "_build", lambda *args: None)
    monkeypatch.setattr(nodes, "_dataset", lambda *args: None)
    nodes.cross_validate(inputs, {}, {}, data)
    assert trained_on == [[5, 5], [5, 5]]  # each fold's 15 normal and 5 COVID films, balanced
