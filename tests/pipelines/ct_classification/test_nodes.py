"""CT classification: slice selection and split protocols, gray decoding of RGB/RGBA
slices, input sizes, activation maps, the comparison table, and the pipeline's structure."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from kedro.pipeline import Pipeline

from covid_imaging.classification.models import build_classifier
from covid_imaging.imaging.io import decode_gray
from covid_imaging.pipelines.classification.nodes import (
    ModalityGuarded,
    checked_data,
    evaluate_classifier,
)
from covid_imaging.pipelines.ct_classification.nodes import (
    CT_COLUMNS,
    CT_DATA_DEFAULTS,
    compare_ct_classifiers,
    evaluate_out_of_fold,
    layer_activation_maps,
    model_data,
    select_ct_folds,
    select_ct_images,
    train_test_folds,
)
from covid_imaging.pipelines.ct_classification.pipeline import (
    CT_CLASSIFICATION_MODELS,
    create_cv_pipeline,
    create_pipeline,
)
from covid_imaging.pipelines.preprocessing.nodes import preprocess_images
from covid_imaging.registry import ModalityError, load_registry
from tests.conftest import chest_like_image, write_png

SPLITS = {"test_fraction": 0.1, "validation_fraction": 0.2, "n_bins": 10, "n_folds": 5, "seed": 42}
PREPROCESSING = {
    "output_root": "unused", "resize": {"size": 64, "interpolation": "area", "mode": "pad"},
    "gaussian_blur": {"enabled": True, "kernel_size": 3, "sigma": 0},
    "morphological_gradient": {"enabled": False, "kernel_size": 3, "iterations": 2},
    "clahe": {"enabled": True, "clip_limit": 2.0, "tile_grid_size": 8}, "normalisation": "minmax",
}


def model_input_table(n_scans: int = 20, slices: int = 5) -> pd.DataFrame:
    """CT slices in scans of ``slices`` (split by scan like the splits pipeline) + X-rays."""
    rows = []
    for scan in range(n_scans):
        label = "covid" if scan % 2 else "non_covid"
        split = "test" if scan % 10 == 0 else ("validation" if scan % 5 == 1 else "train")
        for k in range(slices):
            rows.append({"image_id": f"ct{scan}_{k}", "task": "ct", "label": label, "source": "sarscov2_ct",
                         "group_id": f"sarscov2_ct:s{scan}", "split": split, "cv_fold": -1 if split == "test" else scan % 5,
                         "in_training_sample": split == "train", "image_path": f"x/ct{scan}_{k}.png",
                         "width": 300 + scan, "height": 300})
    for i in range(6):
        rows.append({"image_id": f"cxr{i}", "task": "classification", "label": "covid", "source": "c19rad",
                     "group_id": f"c19rad:{i}", "split": "train", "cv_fold": 0, "in_training_sample": True,
                     "image_path": f"x/cxr{i}.png", "width": 256, "height": 256})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- gray decoding


def _rgb_and_rgba_copies(gray: np.ndarray, folder) -> tuple:
    rgb = write_png(folder / "rgb.png", cv2.merge([gray, gray, gray]))
    rgba = write_png(folder / "rgba.png", cv2.merge([gray, gray, gray, np.full_like(gray, 255)]))
    assert cv2.imread(str(rgb), cv2.IMREAD_UNCHANGED).shape[2] == 3
    assert cv2.imread(str(rgba), cv2.IMREAD_UNCHANGED).shape[2] == 4
    return rgb, rgba


def _preprocessed(paths) -> list[bytes]:
    manifest = pd.DataFrame({"image_id": [f"i{k}" for k in range(len(paths))], "image_key": [str(p) for p in paths],
                             "mask_key": [""] * len(paths)})
    raw = {str(path): (lambda path=path: path.read_bytes()) for path in paths}
    outputs = preprocess_images(manifest, raw, PREPROCESSING)
    return [outputs[f"images/i{k}"]() for k in range(len(paths))]


def test_rgb_and_rgba_slices_preprocess_to_identical_gray_images(tmp_path):
    gray = chest_like_image((90, 120), seed=3)
    rgb_png, rgba_png = _preprocessed(_rgb_and_rgba_copies(gray, tmp_path))
    assert rgb_png == rgba_png  # byte-identical: the channel count is gone after preprocessing
    decoded = cv2.imdecode(np.frombuffer(rgb_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.ndim == 2 and decoded.shape == (64, 64)


def test_real_sarscov2_rgb_slice_equals_its_rgba_copy(shared_data, tmp_path):
    """A real RGB COVID slice of sarscov2_ct and the same pixels saved as RGBA (how every
    non-COVID slice is stored) give byte-identical preprocessed images."""
    manifest = pd.read_csv(shared_data / "manifest.csv", keep_default_na=False)
    rows = manifest[manifest["source"] == "sarscov2_ct"]
    covid = rows.loc[rows["label"] == "covid", "path"][:60]
    channels = {path: cv2.imread(str(shared_data / path), cv2.IMREAD_UNCHANGED).shape[2] for path in covid}
    rgb = next(path for path, n in channels.items() if n == 3)
    rgba = rows.loc[rows["label"] == "non_covid", "path"].iloc[0]
    assert cv2.imread(str(shared_data / rgba), cv2.IMREAD_UNCHANGED).shape[2] == 4
    pixels = cv2.imread(str(shared_data / rgb), cv2.IMREAD_UNCHANGED)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()  # gray content
    copy = write_png(tmp_path / "as_rgba.png", cv2.cvtColor(pixels, cv2.COLOR_BGR2BGRA))
    original, converted, other = _preprocessed([shared_data / rgb, copy, shared_data / rgba])
    assert original == converted
    assert decode_gray(other).ndim == 2  # RGBA originals decode to one gray channel too


def test_ct_inputs_carry_no_raw_file_properties():
    table = model_input_table().assign(channels=3, bit_depth=8, file_format="png")
    selected = select_ct_images(table, {"classes": ["non_covid", "covid"]}, SPLITS)
    assert not {"channels", "bit_depth", "file_format", "width", "height"} & set(selected.columns)
    assert list(selected.columns[: len(CT_COLUMNS)]) == CT_COLUMNS


# ---------------------------------------------------------------- selection and split protocols


def test_select_keeps_ct_slices_only_and_the_grouped_split():
    table = model_input_table()
    selected = select_ct_images(table, {"classes": ["non_covid", "covid"], "split_protocol": "grouped"}, SPLITS)
    assert set(selected["modality"]) == {"ct"} and len(selected) == 100
    assert (selected["default_variant"] == "whole").all() and (selected["split_protocol"] == "grouped").all()
    assert set(selected["split"]) == {"train", "validation", "test"}
    assert (selected.groupby("group_id")["split"].nunique() == 1).all()  # no scan in two splits
    training = selected.loc[selected["in_training_sample"], "label"].value_counts()
    assert set(training.index) == {"covid", "non_covid"} and training.nunique() == 1  # balanced
    assert not selected.loc[selected["split"] != "train", "in_training_sample"].any()


def test_ct_split_is_stratified_by_source_and_label_with_ct_fractions():
    table = model_input_table()
    table.loc[table["image_id"].str.match(r"ct\d_"), "source"] = "ucsd_covid_ct"  # scans 0-9; 10-19 sarscov2
    params = {"splits": {"test_fraction": 0.2, "validation_fraction": 0.2, "n_bins": 5, "n_folds": 0}}
    selected = select_ct_images(table, params, SPLITS)
    test = selected[selected["split"] == "test"]
    assert set(zip(test["source"], test["label"], strict=True)) == {
        (s, label) for s in ("ucsd_covid_ct", "sarscov2_ct") for label in ("covid", "non_covid")}
    assert len(test) == 20 and (selected["cv_fold"] == -1).all()  # 1 scan of 5 per source x label; no folds


def test_random_slice_protocol_splits_scans_across_splits():
    selected = select_ct_images(model_input_table(), {"split_protocol": "random_slices"}, SPLITS)
    assert (selected["split_protocol"] == "random_slices").all()
    assert (selected.groupby("group_id")["split"].nunique() > 1).any()  # the reference's leakage
    assert set(selected["split"]) == {"train", "validation", "test"}
    train = selected[selected["in_training_sample"]]
    assert train["label"].value_counts().nunique() == 1  # training split undersampled to balance
    assert (selected.loc[selected["split"] != "train", "in_training_sample"] == False).all()  # noqa: E712
    assert set(selected["group_id"]) == {f"sarscov2_ct:s{scan}" for scan in range(20)}  # scan ids kept


def test_select_filters_sources_and_rejects_unknown_protocol():
    table = model_input_table()
    table.loc[table["image_id"].str.match(r"ct1?[0-4]_"), "source"] = "ucsd_covid_ct"  # 10 scans: splits need groups
    selected = select_ct_images(table, {"sources": ["ucsd_covid_ct"]}, SPLITS)
    assert set(selected["source"]) == {"ucsd_covid_ct"}
    with pytest.raises(ValueError, match="split_protocol"):
        select_ct_images(table, {"split_protocol": "shuffled"}, SPLITS)
    with pytest.raises(ValueError, match="No CT slices"):
        select_ct_images(table, {"sources": ["nowhere"]}, SPLITS)


def test_cross_source_trains_on_one_source_and_tests_on_every_slice_of_the_other():
    table = model_input_table()
    table.loc[table["image_id"].str.match(r"ct1?[0-4]_"), "source"] = "ucsd_covid_ct"  # scans 0-4, 10-14
    params = {"train_sources": ["ucsd_covid_ct"], "test_sources": ["sarscov2_ct"]}
    selected = select_ct_images(table, params, SPLITS)
    ucsd, sarscov2 = selected[selected["source"] == "ucsd_covid_ct"], selected[selected["source"] == "sarscov2_ct"]
    assert set(ucsd["split"]) <= {"train", "validation"} and not ucsd.empty
    assert (sarscov2["split"] == "test").all() and len(sarscov2) == 50 and not sarscov2["in_training_sample"].any()
    assert (selected["evaluation"] == "ucsd_covid_ct -> sarscov2_ct").all()
    assert (select_ct_images(table, {}, SPLITS)["evaluation"] == "all sources").all()
    with pytest.raises(ValueError, match="go together"):
        select_ct_images(table, {"train_sources": ["ucsd_covid_ct"]}, SPLITS)
    with pytest.raises(ValueError, match="no CT slices"):
        select_ct_images(table, {"train_sources": ["ucsd_covid_ct"], "test_sources": ["elsewhere"]}, SPLITS)


def test_ct_model_nodes_refuse_xray_rows():
    guarded = ModalityGuarded(evaluate_classifier, "ct")
    xrays = model_input_table().query("task == 'classification'").assign(modality="cxr")
    with pytest.raises(ModalityError, match="ct model"):
        guarded(None, xrays, {}, {})


# ---------------------------------------------------------------- input sizes


@pytest.mark.parametrize(
    ("builder", "reference", "cap", "expected"),
    [("vgg16", 224, 64, 64), ("basic_cnn", 32, 64, 32), ("alexnet", 227, 64, 64), ("inceptionv3", 224, 64, 75),
     ("resnet152", 224, None, 224)],
)
def test_model_data_caps_the_reference_size(builder, reference, cap, expected):
    data, sizes = model_data({"image_size": reference, "classes": ["non_covid", "covid"], "batch_size": 4,
                              "max_image_size": cap}, {"builder": builder})
    assert data["image_size"] == expected and data["batch_size"] == 4
    assert "max_image_size" not in data  # applied: the classifier nodes downstream do not know the key
    assert sizes == {"input_size": float(expected), "reference_input_size": float(reference)}


# ---------------------------------------------------------------- activation maps, comparison


def test_basic_cnn_activation_maps_show_every_conv_and_pool_layer(tmp_path):
    rows = []
    for k, label in enumerate(["covid", "non_covid"]):
        path = write_png(tmp_path / f"{k}.png", chest_like_image((40, 40), seed=k))
        rows.append({"image_id": str(k), "label": label, "split": "test", "image_path": str(path),
                     "default_variant": "whole", "in_training_sample": False})
    model = build_classifier("basic_cnn", n_classes=2, input_size=32)
    data = checked_data({"image_size": 32, "classes": ["non_covid", "covid"], "image_variant": "whole"}, CT_DATA_DEFAULTS)
    figure = layer_activation_maps(model, pd.DataFrame(rows), data, {"per_class": 1})
    titles = [axis.get_title() for axis in figure.axes]
    assert len(figure.axes) == 2 * (1 + 6)  # 2 slices x (input + 3 conv + 3 pool)
    assert any(t.startswith("conv1\n32x32") for t in titles) and any(t.startswith("pool3\n4x4") for t in titles)


def _report(balanced: float) -> pd.DataFrame:
    rows = []
    for cls in ("macro", "covid", "non_covid"):
        for metric in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc"):
            rows.append({"scope": "overall", "class": cls, "metric": metric, "value": balanced,
                         "ci_low": balanced - 0.1, "ci_high": balanced + 0.1, "n": 40, "n_clusters": 6, "support": 20, "note": ""})
    return pd.DataFrame(rows)


def test_comparison_table_has_one_row_per_model_with_cis():
    results = {}
    for index, model in enumerate(CT_CLASSIFICATION_MODELS):
        results[f"{model}__test"] = {"test_accuracy": 0.5 + index / 100, "test_balanced_accuracy": 0.6,
                                     "test_roc_auc": 0.7, "test_accuracy_sarscov2_ct": 0.5}
        results[f"{model}__gradcam"] = {"gradcam_maps_all_zero": 0.0}
        results[f"{model}__sizes"] = {"input_size": 64.0, "reference_input_size": 224.0}
        results[f"{model}__report"] = _report(0.6)
    images = pd.DataFrame({"split_protocol": ["grouped"], "evaluation": ["all sources"]})
    table = compare_ct_classifiers(images, **results)
    assert list(table["model"]) == list(CT_CLASSIFICATION_MODELS) and len(table) == 9
    assert list(table.columns[:14]) == [
        "model", "split_protocol", "evaluation", "input_size", "reference_input_size", "n_test", "n_test_scans",
        "test_accuracy", "test_balanced_accuracy", "test_balanced_accuracy_ci_low", "test_balanced_accuracy_ci_high",
        "test_roc_auc", "test_roc_auc_ci_low", "test_roc_auc_ci_high"]
    assert {"test_covid_f1", "test_covid_recall", "test_covid_precision", "test_accuracy_sarscov2_ct",
            "gradcam_maps_all_zero"} <= set(table.columns)
    assert (table["split_protocol"] == "grouped").all()
    assert table["test_balanced_accuracy_ci_low"].iloc[0] == pytest.approx(0.5)
    assert (table["n_test"] == 40).all() and (table["n_test_scans"] == 6).all()


# ---------------------------------------------------------------- pipeline structure


def test_all_nine_registered_ct_models_build_namespaced_pipelines():
    registry = load_registry()
    assert CT_CLASSIFICATION_MODELS == registry.names("ct_classification")
    assert len(CT_CLASSIFICATION_MODELS) == 9
    pipe = create_pipeline()
    namespaces = {n.namespace for n in pipe.nodes if n.namespace}
    assert namespaces == {f"ct_classification.{m}" for m in CT_CLASSIFICATION_MODELS}
    for model in CT_CLASSIFICATION_MODELS:
        names = {n.name.rsplit(".", 1)[-1] for n in pipe.nodes if n.namespace == f"ct_classification.{model}"}
        expected = {"model_data", "train", "plot_learning_curves", "evaluate", "grad_cam", "summarise_seeds"} | (
            {"activation_maps"} if model == "basic_cnn" else set())
        assert names == expected
        for node in pipe.nodes:  # every model node is guarded to CT slices
            if node.namespace == f"ct_classification.{model}" and node.name.rsplit(".", 1)[-1] not in (
                    "model_data", "plot_learning_curves", "summarise_seeds"):  # these read no images
                assert isinstance(node.func, ModalityGuarded) and node.func.modality == "ct"
    assert "ct_classification_comparison" in pipe.all_outputs()
    assert "model_input_table" in pipe.inputs() and "lung_masked_images" not in pipe.all_inputs()
    assert isinstance(create_pipeline(models=["basic_cnn"]), Pipeline)
    with pytest.raises(ValueError, match="not registered"):
        create_pipeline(models=["lenet"])


def test_registered_pipelines_and_hook_track_the_ct_root():
    from covid_imaging.hooks import TRACKED_NAMESPACE_ROOTS, model_namespace
    from covid_imaging.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    models = pipelines["ct_classification_models"]
    assert set(models.nodes) < set(pipelines["ct_classification"].nodes)
    assert "model_input_table" in models.inputs()
    assert "ct_classification" in TRACKED_NAMESPACE_ROOTS
    train = next(n for n in models.nodes if n.name == "ct_classification.vgg16.train")
    assert model_namespace(train) == "ct_classification.vgg16"


def test_catalog_resolves_every_ct_dataset():
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from covid_imaging.settings import CONFIG_LOADER_ARGS  # the project's resolvers
    from tests.conftest import PROJECT_ROOT

    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **CONFIG_LOADER_ARGS)
    catalog = DataCatalog.from_config(loader["catalog"])
    expected = {
        "model": "TensorFlowModelDataset", "metrics_report": "AtomicCSVDataset", "test_metrics": "AtomicJSONDataset",
        "gradcam_overlays": "AtomicMatplotlibDataset", "activation_maps": "AtomicMatplotlibDataset",
        "input_metrics": "AtomicJSONDataset", "data": "AtomicJSONDataset", "predictions": "AtomicCSVDataset",
    }
    for output, kind in expected.items():
        assert type(catalog[f"ct_classification.basic_cnn.{output}"]).__name__ == kind
    assert "ct_classification_comparison.csv" in str(catalog["ct_classification_comparison"]._describe()["filepath"])
    assert "06_models/synthetic_demo/ct_classification/vgg16.keras" in str(catalog["ct_classification.vgg16.model"]._describe()["filepath"])
    cv_expected = {
        "data": "AtomicJSONDataset", "fold_predictions": "AtomicCSVDataset", "predictions": "AtomicCSVDataset",
        "metrics_report": "AtomicCSVDataset", "test_metrics": "AtomicJSONDataset", "fold_metrics": "AtomicJSONDataset",
        "input_metrics": "AtomicJSONDataset", "confusion_matrix": "AtomicMatplotlibDataset", "roc_curves": "AtomicMatplotlibDataset",
    }
    for output, kind in cv_expected.items():
        dataset = catalog[f"ct_classification_cv.basic_cnn.{output}"]
        assert type(dataset).__name__ == kind, output
        assert "/ct_classification_cv/basic_cnn/" in str(dataset._describe()["filepath"])
    assert "ct_classification_folds.csv" in str(catalog["ct_classification_folds"]._describe()["filepath"])


def test_grad_cam_with_and_without_lung_masks(tmp_path):
    """The shared Grad-CAM node: with lung masks (X-ray) it measures the lung share;
    without (CT) it draws the overlays and counts all-zero maps only."""
    from covid_imaging.imaging.io import encode_png
    from covid_imaging.pipelines.classification.nodes import (
        explain_with_gradcam,
        explain_with_gradcam_unmasked,
    )

    rows, masks = [], {}
    for k, label in enumerate(["covid", "non_covid"]):
        path = write_png(tmp_path / f"{k}.png", chest_like_image((32, 32), seed=k))
        rows.append({"image_id": str(k), "label": label, "split": "test", "image_path": str(path),
                     "default_variant": "whole", "in_training_sample": False})
        mask = np.zeros((32, 32), np.uint8)
        mask[4:28, 4:28] = 255
        masks[f"masks/{k}"] = lambda mask=mask: encode_png(mask)
    inputs = pd.DataFrame(rows)
    model = build_classifier("simple_cnn", n_classes=2, input_size=32, filters=(4, 8), dense_units=8)
    data = checked_data({"image_size": 32, "classes": ["non_covid", "covid"], "image_variant": "whole"}, CT_DATA_DEFAULTS)
    figure, metrics = explain_with_gradcam(model, inputs, masks, data, {"per_class": 1})
    assert {"gradcam_lung_share_mean", "gradcam_lung_share_std", "gradcam_maps_all_zero"} == set(metrics)
    assert len(figure.axes) == 2
    figure, metrics = explain_with_gradcam_unmasked(model, inputs, data, {"per_class": 1})
    assert set(metrics) == {"gradcam_maps_all_zero"} and 0 <= metrics["gradcam_maps_all_zero"] <= 2
    assert len(figure.axes) == 2


def test_evaluation_resamples_whole_scans_unless_told_to_resample_slices(tmp_path):
    """The CIs of a CT model count scans, not slices: a test split of 4 scans x 5 slices
    has 4 independent units (``n_clusters``); ``bootstrap_unit: image`` restores 20."""
    rows = []
    for scan in range(4):
        for k in range(5):
            path = write_png(tmp_path / f"s{scan}_{k}.png", chest_like_image((32, 32), seed=10 * scan + k))
            rows.append({"image_id": f"s{scan}_{k}", "label": ["non_covid", "covid"][scan % 2], "source": "sarscov2_ct",
                         "group_id": f"sarscov2_ct:s{scan}", "split": "test", "image_path": str(path),
                         "default_variant": "whole", "in_training_sample": False})
    inputs = pd.DataFrame(rows)
    model = build_classifier("simple_cnn", n_classes=2, input_size=32, filters=(4, 8), dense_units=8)
    data = checked_data({"image_size": 32, "classes": ["non_covid", "covid"], "image_variant": "whole", "seed": 0, "batch_size": 8}, CT_DATA_DEFAULTS)

    by_scan = evaluate_classifier(model, inputs, data, {"n_bootstrap": 20})[0]
    by_slice = evaluate_classifier(model, inputs, data, {"n_bootstrap": 20, "bootstrap_unit": "image"})[0]
    assert set(by_scan["n_clusters"]) == {4} and set(by_slice["n_clusters"]) == {20}
    with pytest.raises(ValueError, match="bootstrap_unit must be 'group' or 'image', got 'slices'"):
        evaluate_classifier(model, inputs, data, {"n_bootstrap": 20, "bootstrap_unit": "slices"})


# ---------------------------------------------------------------- rotated test folds (ct_classification_cv)

CT_SPLITS = {"splits": {"test_fraction": 0.2, "validation_fraction": 0.2, "n_bins": 5, "n_folds": 0}}


@pytest.mark.parametrize("protocol", ["grouped", "random_slices"])
def test_rotated_folds_test_every_slice_once_and_fold_zero_is_the_single_split(protocol):
    table = model_input_table()
    params = {**CT_SPLITS, "split_protocol": protocol}
    folds = select_ct_folds(table, params, SPLITS)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    test = folds[folds["split"] == "test"]
    assert sorted(test["image_id"]) == sorted(table.loc[table["task"] == "ct", "image_id"])  # each slice once
    assert (folds["evaluation"] == "5 rotated test folds").all()
    single = select_ct_images(table, params, SPLITS)
    fold_zero = folds[folds["fold"] == 0].drop(columns="fold").reset_index(drop=True)
    pd.testing.assert_frame_equal(fold_zero.drop(columns="evaluation"), single.drop(columns="evaluation"))
    for _, rows in folds.groupby("fold"):
        assert set(rows["split"]) == {"train", "validation", "test"} and len(rows) == 100
        if protocol == "grouped":  # no scan on two sides of any fold
            assert (rows.groupby("group_id")["split"].nunique() == 1).all()
        assert rows.loc[rows["in_training_sample"], "label"].value_counts().nunique() == 1  # balanced training


def test_rotated_folds_refuse_cross_source_and_fractions_that_do_not_tile():
    table = model_input_table()
    with pytest.raises(ValueError, match="unset train_sources and test_sources"):
        select_ct_folds(table, {**CT_SPLITS, "train_sources": ["a"], "test_sources": ["b"]}, SPLITS)
    with pytest.raises(ValueError, match="test_fraction 0.4 of 5 bins"):
        select_ct_folds(table, {"splits": {"test_fraction": 0.4, "validation_fraction": 0.2, "n_bins": 5}}, SPLITS)


def test_out_of_fold_predictions_cover_every_slice_once_with_scan_intervals(tmp_path):
    """Each fold trains its own model and predicts only its own test slices; the
    evaluation scores all of them at once and resamples scans."""
    table = model_input_table(n_scans=10, slices=4)
    table = table[table["task"] == "ct"].copy()
    for row in table.itertuples():
        brightness = 40 if row.label == "covid" else 0  # learnable
        image = np.clip(chest_like_image((32, 32), seed=row.Index).astype(int) + brightness, 0, 255).astype(np.uint8)
        table.loc[row.Index, "image_path"] = str(write_png(tmp_path / f"{row.image_id}.png", image))
    folds = select_ct_folds(table, CT_SPLITS, SPLITS)
    model = {"builder": "simple_cnn", "strategy": "scratch", "filters": [4, 8], "dense_units": 8}
    training = {"main": {"epochs": 1, "optimizer": "adam", "learning_rate": 0.001}}
    data = checked_data({"image_size": 32, "batch_size": 8, "seed": 0, "augment": False, "image_variant": "whole",
                        "classes": ["non_covid", "covid"]}, CT_DATA_DEFAULTS)
    evaluation = {"n_bootstrap": 20}
    predictions, fold_metrics = train_test_folds(folds, model, training, data, evaluation, {"fresh_process": False})
    assert sorted(predictions["image_id"]) == sorted(table["image_id"])
    tested_in = folds[folds["split"] == "test"].set_index("image_id")["fold"]
    assert (predictions.set_index("image_id")["fold"] == tested_in.loc[predictions["image_id"]]).all()
    assert fold_metrics["n_folds"] == 5 and {f"fold{k}_test_balanced_accuracy" for k in range(5)} <= set(fold_metrics)
    assert np.isclose(fold_metrics["fold_test_balanced_accuracy_mean"],
                      np.mean([fold_metrics[f"fold{k}_test_balanced_accuracy"] for k in range(5)]))
    with pytest.raises(ValueError, match="ct_classification_cv.*isolate"):
        train_test_folds(folds, model, training, data, evaluation, {"isolate": True})

    report, metrics, _, _, table_out = evaluate_out_of_fold(predictions, data, evaluation)
    assert set(report["n_clusters"]) == {10}  # 10 scans, not 40 slices
    assert metrics["test_n_folds"] == 5 and len(table_out) == 40 and {"fold", "group_id"} <= set(table_out.columns)


def test_each_fold_reports_the_seed_that_validation_kept(monkeypatch):
    """A fold's test predictions and metrics are those of the seed chosen on validation
    (taken from the seeds' own predictions, not from a second pass)."""
    from covid_imaging.pipelines.ct_classification import nodes as ct_nodes

    folds = select_ct_folds(model_input_table(n_scans=10, slices=2), CT_SPLITS, SPLITS)
    classes = ["non_covid", "covid"]

    def fake_train_over_seeds(rows, model_params, training, data, evaluation):
        tables = []
        for seed, right_on in ((42, {"validation": False, "test": True}), (43, {"validation": True, "test": False})):
            for split in ("validation", "test"):
                part = rows[rows["split"] == split]
                truth = (part["label"] == "covid").to_numpy(dtype=float)
                p_covid = truth if right_on[split] else 1.0 - truth  # seed 42: wrong on validation, right on test
                tables.append(part[["image_id", "label"]].assign(split=split, seed=seed, p_non_covid=1.0 - p_covid,
                                                                   p_covid=p_covid))
        return None, {"loss": [1.0, 0.5]}, pd.concat(tables, ignore_index=True)

    monkeypatch.setattr(ct_nodes, "train_over_seeds", fake_train_over_seeds)
    data = checked_data({"image_size": 32, "batch_size": 8, "seed": 42, "image_variant": "whole", "classes": classes}, CT_DATA_DEFAULTS)
    predictions, metrics = train_test_folds(folds, {"builder": "simple_cnn"}, {}, data, {"n_bootstrap": 20},
                                            {"fresh_process": False})
    # seed 43 is kept (validation 1.0 against 0.0): its test predictions are all wrong
    assert metrics["fold0_validation_balanced_accuracy"] == 1.0 and metrics["fold0_test_balanced_accuracy"] == 0.0
    assert metrics["fold0_epochs"] == 2.0
    tested = folds[folds["split"] == "test"]
    assert sorted(predictions["image_id"]) == sorted(tested["image_id"])
    assert ((predictions["p_covid"] > 0.5) != (predictions["label"] == "covid")).all()
    assert predictions[["source", "group_id"]].notna().all().all()


def test_cv_pipeline_reads_each_models_registry_block_and_the_hook_tracks_it():
    from covid_imaging.hooks import TRACKED_NAMESPACE_ROOTS, model_namespace
    from covid_imaging.pipeline_registry import register_pipelines

    pipe = create_cv_pipeline()
    assert {n.namespace for n in pipe.nodes if n.namespace} == {f"ct_classification_cv.{m}" for m in CT_CLASSIFICATION_MODELS}
    train = next(n for n in pipe.nodes if n.name == "ct_classification_cv.vgg16.train_test_folds")
    assert {"params:ct_classification.vgg16.model", "params:ct_classification.vgg16.training",
            "params:ct_classification.vgg16.evaluation", "params:ct_classification_cv",
            "ct_classification_folds"} <= set(train.inputs)
    assert isinstance(train.func, ModalityGuarded) and train.func.modality == "ct"
    assert "ct_classification_cv_comparison" in pipe.all_outputs()
    assert "ct_classification_cv" in TRACKED_NAMESPACE_ROOTS and model_namespace(train) == "ct_classification_cv.vgg16"
    assert set(pipe.nodes) <= set(register_pipelines()["ct_classification_cv"].nodes)


def test_a_ct_data_block_with_a_typo_fails_naming_the_key():
    with pytest.raises(ValueError, match=r"data\.max_image_sise"):
        model_data({"image_size": 224, "classes": ["non_covid", "covid"], "max_image_sise": 32}, {"builder": "vgg16"})
