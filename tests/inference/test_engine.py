"""Per-image statistics, QC flags, the modality guard and parameter checks of inference."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from covid_imaging.inference.engine import DEFAULT_QC_PARAMS, _classify, _guarded, lung_statistics
from covid_imaging.inference.models import LoadedModel, ModelNotFoundError, ModelStore
from covid_imaging.pipelines.inference.nodes import resolve_inference_params
from covid_imaging.registry import ModalityError, load_registry


def _two_lungs(height=200, width=200):
    mask = np.zeros((height, width), np.uint8)
    cv2.rectangle(mask, (30, 40), (79, 159), 1, -1)  # image left = patient's right: 50 x 120
    cv2.rectangle(mask, (120, 40), (159, 139), 1, -1)  # image right = patient's left: 40 x 100
    return mask


def test_areas_left_and_right_and_no_flags_for_two_plausible_lungs():
    mask = _two_lungs()
    stats = lung_statistics(mask, mask.astype(np.float32), DEFAULT_QC_PARAMS)
    assert stats["right_lung_area_px"] == 50 * 120
    assert stats["left_lung_area_px"] == 40 * 100
    assert stats["lung_area_px"] == 50 * 120 + 40 * 100
    assert stats["lung_area_fraction"] == pytest.approx((50 * 120 + 40 * 100) / 200**2)
    assert stats["n_components"] == 2
    assert stats["qc_flags"] == ""


def test_qc_flags():
    qc = DEFAULT_QC_PARAMS
    one = _two_lungs()
    one[:, 100:] = 0
    assert lung_statistics(one, one.astype(np.float32), qc)["qc_flags"] == "one_lung"
    empty = np.zeros((100, 100), np.uint8)
    flags = lung_statistics(empty, np.zeros((100, 100), np.float32), qc)["qc_flags"].split(";")
    assert {"no_lung", "implausible_area", "low_confidence"} <= set(flags)
    speckled = np.zeros((100, 100), np.float32)
    speckled[10::20, 10::20] = 1.0  # 25 separate 5 x 5 blobs of the thresholded map
    speckled = cv2.dilate(speckled, np.ones((5, 5), np.uint8))
    speckled[0, 0] = 1.0  # one pixel: under min_component_fraction, not counted
    stats = lung_statistics((speckled > 0).astype(np.uint8), speckled, qc)
    assert stats["qc_many_components"] and stats["n_components"] == 25
    unsure = _two_lungs()
    assert lung_statistics(unsure, unsure * 0.6, qc)["qc_low_confidence"]


def test_a_ct_slice_never_reaches_an_x_ray_model():
    registry = load_registry()
    spec = registry.get("cxr_classification", "simple_cnn_scratch")
    called = []

    class Recorder:
        def predict_on_batch(self, images):
            called.append(len(images))
            return np.zeros((len(images), 3))

    guarded = _guarded(_classify, spec.modality)
    model = LoadedModel(spec, Recorder(), "v")
    table = pd.DataFrame({"image_id": ["slice_1"], "task": ["ct"]})
    with pytest.raises(ModalityError, match="slice_1"):
        guarded(table, np.zeros((1, 8, 8, 1)), model)
    assert called == []
    guarded(table.assign(task="cxr"), np.zeros((1, 8, 8, 1)), model)
    assert called == [1]


def test_unknown_parameters_fail():
    with pytest.raises(ValueError, match="sourec"):
        resolve_inference_params({"sourec": "x"})
    with pytest.raises(ValueError, match="max_component"):
        resolve_inference_params({"qc": {"max_component": 3}})
    assert resolve_inference_params({"versions": {"segmentation.unet": "v1"}})["versions"] == {"segmentation.unet": "v1"}
    # --params=inference.versions.segmentation.unet=v1 nests the namespace
    assert resolve_inference_params({"versions": {"segmentation": {"unet": "v1"}}})["versions"] == {"segmentation.unet": "v1"}


def test_a_missing_model_is_a_clear_error(tmp_path):
    store = ModelStore(str(tmp_path / "{namespace_root}" / "{name}.keras"))
    spec = load_registry().get("segmentation", "unet")
    with pytest.raises(ModelNotFoundError, match=r"segmentation\.unet.*train it first"):
        store.load(spec)


def _two_head_lung_model(size: int = 32):
    """Head "v7" (the default): the bright lungs; head "nlm": nothing (so the heads are told apart)."""
    import keras

    from covid_imaging.segmentation.conventions import MaskConventionHeads

    image = keras.Input((size, size, 1))
    lung = keras.layers.Lambda(lambda x: keras.ops.cast(x > 0.5, "float32"))(image)
    return keras.Model(image, MaskConventionHeads(("v7", "nlm"))(keras.layers.Concatenate()([lung, lung * 0.0])))


@pytest.mark.parametrize(
    "convention, source, lung_expected",
    [(None, "s", True), ("v7", "s", True), ("nlm", "s", False), (None, "montgomery", False), ("v7", "montgomery", True)],
)
def test_inference_masks_come_from_the_chosen_convention_head(convention, source, lung_expected):
    """An explicit convention for every image; else the source's known one; else the default head."""
    from covid_imaging.imaging.io import encode_png
    from covid_imaging.inference.engine import InferenceEngine, InferenceModels, InferenceSettings
    from tests.inference.helpers import radiograph

    spec = load_registry().get("segmentation", "unet")
    models = InferenceModels(LoadedModel(spec, _two_head_lung_model(), "v"))
    settings = InferenceSettings(
        preprocessing={"resize": {"size": 32}}, segmentation_postprocessing={"local_threshold": {"enabled": False}},
        lung_masking={}, gradcam=False, write_files=False, thumbnail_size=0, mask_convention=convention,
        source_conventions={"montgomery": "nlm"},
    )
    image, _ = radiograph(64, 64)
    rows = pd.DataFrame([{"image_id": "x", "image_key": "x.png", "task": "cxr", "source": source, "label": "", "mask_key": ""}])
    results, rejected = InferenceEngine(models, settings).process(rows, {"x.png": lambda: encode_png(image)})
    assert not rejected
    assert (results[0].row["lung_area_fraction"] > 0.1) is lung_expected


def test_a_convention_the_model_has_no_head_for_is_refused():
    from covid_imaging.inference.engine import InferenceEngine, InferenceModels, InferenceSettings

    spec = load_registry().get("segmentation", "unet")
    settings = InferenceSettings(preprocessing={}, segmentation_postprocessing={}, lung_masking={}, mask_convention="jsrt")
    with pytest.raises(ValueError, match=r"no 'jsrt' head; its mask convention heads are \['v7', 'nlm'\]"):
        InferenceEngine(InferenceModels(LoadedModel(spec, _two_head_lung_model(), "v")), settings)


def test_lung_crops_only_from_the_network_the_classifier_was_trained_with():
    """A lung-crop classifier with another segmentation model than lung_masking's, or a
    mask convention without a segmentation model, is refused before any image is read."""
    from covid_imaging.inference.engine import InferenceEngine, InferenceModels, InferenceSettings
    from tests.inference.helpers import threshold_model, tiny_classifier

    registry = load_registry()
    classifier = LoadedModel(registry.get("cxr_classification", "simple_cnn_scratch"), tiny_classifier(3), "v")
    settings = InferenceSettings(preprocessing={}, segmentation_postprocessing={}, lung_masking={"enabled": True})
    fcn = LoadedModel(registry.get("segmentation", "fcn"), threshold_model(), "v")
    with pytest.raises(ValueError, match=r"masked by 'unet' \(lung_masking.segmentation_model\), but "
                                         r"inference.segmentation_model is 'fcn'"):
        InferenceEngine(InferenceModels(fcn, (classifier,)), settings)
    unet = LoadedModel(registry.get("segmentation", "unet"), threshold_model(), "v")
    InferenceEngine(InferenceModels(unet, (classifier,)), settings)  # the network it was trained with
    with pytest.raises(ValueError, match="inference.mask_convention is set but inference.segmentation_model is null"):
        InferenceEngine(InferenceModels(None, ()), InferenceSettings(
            preprocessing={}, segmentation_postprocessing={}, lung_masking={}, mask_convention="v7"))


def _engine_on_files(tmp_path, compute):
    """An engine with a segmentation model and a lung-crop classifier, and loaders of
    files on disk (picklable, as the catalog's are) including one corrupt file."""
    from functools import partial
    from pathlib import Path

    from covid_imaging.imaging.io import encode_png
    from covid_imaging.inference.engine import InferenceEngine, InferenceModels, InferenceSettings
    from tests.inference.helpers import radiograph, threshold_model, tiny_classifier

    registry = load_registry()
    models = InferenceModels(
        LoadedModel(registry.get("segmentation", "unet"), threshold_model(), "v"),
        (LoadedModel(registry.get("cxr_classification", "simple_cnn_scratch"), tiny_classifier(3), "v"),),
    )
    settings = InferenceSettings(
        preprocessing={"resize": {"size": 32}}, segmentation_postprocessing={"local_threshold": {"enabled": False}},
        lung_masking={"enabled": True, "crop_to_bbox": True, "margin_px": 2, "min_lung_area_fraction": 0.0,
                      "postprocessing": {"local_threshold": {"enabled": False}}},
        gradcam=True, compute=compute,
    )
    rows, raw_files = [], {}
    for index, (height, width) in enumerate([(64, 64), (80, 60), (70, 90), (64, 64), (50, 50)]):
        image, mask = radiograph(height, width, seed=index)
        for key, content in ((f"{index}.png", encode_png(image)), (f"{index}_mask.png", encode_png(mask))):
            (tmp_path / key).write_bytes(content)
            raw_files[key] = partial(Path.read_bytes, tmp_path / key)
        rows.append({"image_id": f"i{index}", "image_key": f"{index}.png", "task": "cxr", "source": "s",
                     "label": "normal", "mask_key": f"{index}_mask.png" if index % 2 else ""})
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return InferenceEngine(models, settings), pd.DataFrame(rows), raw_files


def _outputs(results):
    return [(r.row, r.files, r.thumbnail, {k: v.tolist() for k, v in r.probabilities.items()}) for r in results]


@pytest.mark.parametrize("compute", [
    {"backend": "threads", "n_workers": 2},
    pytest.param({"dask": {"scheduler_address": "local", "n_workers": 2}}, marks=pytest.mark.slow),
])
def test_inference_on_the_compute_backend_equals_the_in_process_run(tmp_path, compute):
    """Decoding and post-processing on threads or a Dask LocalCluster: the same rows (with
    Dice against true masks), files, thumbnails and probabilities as one thread; a corrupt
    file is rejected with its decoder's reason on every backend."""
    from covid_imaging.compute import close_dask_clients

    serial, rows, raw_files = _engine_on_files(tmp_path, {"backend": "serial"})
    expected, expected_rejected = serial.process(rows, raw_files)
    engine, _, _ = _engine_on_files(tmp_path, compute)
    try:
        results, rejected = engine.process(rows, raw_files)
    finally:
        close_dask_clients()
    assert [r.row["image_id"] for r in expected] == ["i0", "i1", "i2", "i4"]
    assert "dice_native" in expected[1].row and expected[1].row["dice_native"] > 0.5
    assert {"masks/i0.png", "overlays/i0.png", "gradcam/simple_cnn_scratch/i0.png"} <= set(expected[0].files)
    assert expected[0].row["simple_cnn_scratch.input"] == "lungs"
    assert [r["file"] for r in expected_rejected] == ["3.png"]
    assert "cannot be read at inference: " in expected_rejected[0]["reason"]
    assert expected_rejected[0]["reason"] != "cannot be read at inference: "
    assert rejected == expected_rejected
    assert _outputs(results) == _outputs(expected)
