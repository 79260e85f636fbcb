"""`kedro run --pipeline=inference` on a folder of new images, with tiny stand-in models."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from covid_imaging.segmentation.metrics import dice_score
from tests.conftest import run_kedro
from tests.inference.helpers import NEW_VERSION, OLD_VERSION, write_images
from tests.pipelines.inference.conftest import TINY_PARAMS

pytestmark = pytest.mark.slow


def _run_folder(output):
    runs = sorted(p for p in output.iterdir() if not p.name.startswith("."))
    assert len(runs) == 1, runs
    return runs[0]


def test_folder_of_new_images(inference_project, tmp_path):
    source, output = tmp_path / "new", tmp_path / "out"
    sizes = write_images(source)
    from tests.conftest import write_png

    write_png(source / "blank.png", np.zeros((70, 70), np.uint8))  # decodes, but shows no lung
    run_kedro(inference_project, "inference", params={
        **TINY_PARAMS, "inference.source": str(source), "inference.output": str(output),
        "inference.versions": {"segmentation.unet": OLD_VERSION},  # bright = lung
    })
    run = _run_folder(output)
    predictions = pd.read_csv(run / "predictions.csv")
    assert sorted(predictions["image_id"]) == sorted([*sizes, "blank"])
    blank = predictions.set_index("image_id").loc["blank"]
    assert blank["qc_no_lung"] and "no_lung" in blank["qc_flags"]
    assert blank["simple_cnn_scratch.status"].startswith("skipped: predicted lung area 0.0%")
    assert not (run / "gradcam" / "simple_cnn_scratch" / "blank.png").exists()
    for image_id, (height, width) in sizes.items():
        mask = cv2.imread(str(run / "masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width)  # native resolution, same stem
        assert set(np.unique(mask)) <= {0, 255}
        overlay = cv2.imread(str(run / "overlays" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert overlay.shape == (height, width, 3)
        assert (overlay[..., 1] == 255).any()  # the green contour is drawn
        row = predictions.set_index("image_id").loc[image_id]
        assert row["lung_area_fraction"] == pytest.approx((mask > 0).mean())
        assert row["right_lung_area_px"] + row["left_lung_area_px"] == (mask > 0).sum()
        assert row["right_lung_area_px"] > 0 and row["left_lung_area_px"] > 0
        assert not row["qc_no_lung"] and not row["qc_one_lung"]
        assert row["simple_cnn_scratch.status"] == "ok" and row["simple_cnn_scratch.input"] == "lungs"
        probabilities = row[[f"simple_cnn_scratch.p_{c}" for c in ("normal", "bacterial", "covid")]]
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-5)
        gradcam = cv2.imread(str(run / "gradcam" / "simple_cnn_scratch" / f"{image_id}.png"))
        assert gradcam is not None and gradcam.ndim == 3
    rejected = pd.read_csv(run / "rejected_files.csv")
    assert list(rejected["file"].str.rsplit("/", n=1).str[-1]) == ["broken.png"]
    assert rejected["reason"].iloc[0]
    versions = json.loads((run / "models.json").read_text())["models"]
    assert versions == {"segmentation.unet": OLD_VERSION, "classification.simple_cnn_scratch": NEW_VERSION}
    html = (run / "report.html").read_text()
    assert "data:image/jpeg;base64," in html and OLD_VERSION in html and "broken.png" in html
    assert not (run / "external_segmentation_metrics.csv").exists()  # no masks in the source


def test_latest_version_by_default(inference_project, tmp_path):
    source, output = tmp_path / "new", tmp_path / "out"
    write_images(source)
    run_kedro(inference_project, "inference", params={
        **TINY_PARAMS, "inference.source": str(source), "inference.output": str(output), "inference.classifiers": [],
    })
    run = _run_folder(output)
    assert json.loads((run / "models.json").read_text())["models"] == {"segmentation.unet": NEW_VERSION}
    # the newest stand-in takes the dark background for lung: the lungs are not found as two sides
    mask = cv2.imread(str(run / "masks" / "a.png"), cv2.IMREAD_GRAYSCALE) > 0
    from tests.inference.helpers import radiograph

    _, bright_lungs = radiograph(96, 80, seed=1)
    assert dice_score(mask, bright_lungs > 0) < 0.5


def test_external_evaluation_paired_folders(inference_project, tmp_path):
    """Dice/IoU at native size against the given masks, checked against numpy by hand."""
    from tests.conftest import write_png
    from tests.inference.helpers import radiograph

    source, output = tmp_path / "hospital", tmp_path / "out"
    truths = {}
    for index, (height, width, shift) in enumerate([(96, 80, 0), (110, 90, 6), (100, 120, -8)]):
        image, mask = radiograph(height, width, seed=index, shift=shift)
        write_png(source / "images" / f"p{index}.png", image)
        write_png(source / "masks" / f"p{index}.png", mask)
        truths[f"images/p{index}"] = mask > 0
    # p0 and p1 are films of one patient: the classification bootstrap must resample 2 patients
    (source / "patients.csv").write_text("path,patientid\nimages/p0.png,A\nimages/p1.png,A\nimages/p2.png,B\n")
    run_kedro(inference_project, "inference", params={
        **TINY_PARAMS, "inference.source": str(source), "inference.output": str(output),
        "inference.layout": "paired_folders", "inference.label": "covid", "inference.source_name": "hospital_x",
        "inference.versions": {"segmentation.unet": OLD_VERSION}, "inference.evaluation": {"n_bootstrap": 20},
        "inference.ingestion": {"patient_metadata": {"file": "patients.csv"}},
    })
    run = _run_folder(output)
    per_image = pd.read_csv(run / "external_segmentation_per_image.csv").set_index("image_id")
    dices = []
    for image_id, truth in truths.items():
        predicted = cv2.imread(str(run / "masks" / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE) > 0
        intersection = np.logical_and(predicted, truth).sum()
        dice = 2 * intersection / (predicted.sum() + truth.sum())
        iou = intersection / np.logical_or(predicted, truth).sum()
        assert per_image.loc[image_id, "dice"] == pytest.approx(dice)
        assert per_image.loc[image_id, "iou"] == pytest.approx(iou)
        dices.append(dice)
    assert min(dices) < 0.95 < max(dices)  # shifted truths score lower: the comparison is real
    summary = pd.read_csv(run / "external_segmentation_metrics.csv")
    overall = summary[summary["grouping"] == "all"].iloc[0]
    assert overall["n_images"] == 3
    assert overall["dice_mean"] == pytest.approx(np.mean(dices))
    assert overall["dice_std"] == pytest.approx(np.std(dices, ddof=1))
    assert set(summary.loc[summary["grouping"] == "source", "group"]) == {"hospital_x"}

    classification = pd.read_csv(run / "external_classification_metrics.csv")
    predictions = pd.read_csv(run / "predictions.csv")
    accuracy = (predictions["simple_cnn_scratch.prediction"] == "covid").mean()
    macro = classification[(classification["scope"] == "overall") & (classification["class"] == "macro")]
    assert macro.set_index("metric").loc["accuracy", "value"] == pytest.approx(accuracy)
    assert set(classification["scope"]) == {"overall", "hospital_x"}
    assert set(macro["n_clusters"]) == {2}  # patients, not the 3 films


def test_ct_slices_go_to_ct_classifiers_only(inference_project, tmp_path):
    """A manifest_csv source mixing X-rays and CT slices: each model sees its own modality."""
    from tests.conftest import write_png
    from tests.inference.helpers import radiograph

    source, output = tmp_path / "mixed", tmp_path / "out"
    lines = ["path,label,task"]
    for index in range(2):
        image, _ = radiograph(90, 90, seed=index)
        write_png(source / "cxr" / f"x{index}.png", image)
        write_png(source / "ct" / f"s{index}.png", 255 - image)
        lines += [f"cxr/x{index}.png,covid,cxr", f"ct/s{index}.png,covid,ct"]
    (source / "manifest.csv").write_text("\n".join(lines) + "\n")
    run_kedro(inference_project, "inference", params={
        **TINY_PARAMS, "inference.source": str(source), "inference.output": str(output),
        "inference.layout": "manifest_csv", "inference.classifiers": ["simple_cnn_scratch", "basic_cnn"],
        "inference.versions": {"segmentation.unet": OLD_VERSION},
    })
    run = _run_folder(output)
    predictions = pd.read_csv(run / "predictions.csv", keep_default_na=False).set_index("image_id")
    ct, cxr = predictions[predictions["modality"] == "ct"], predictions[predictions["modality"] == "cxr"]
    assert sorted(ct.index) == ["ct/s0", "ct/s1"] and sorted(cxr.index) == ["cxr/x0", "cxr/x1"]
    assert (ct["basic_cnn.status"] == "ok").all() and (ct["simple_cnn_scratch.status"] == "").all()
    assert (cxr["simple_cnn_scratch.status"] == "ok").all() and (cxr["basic_cnn.status"] == "").all()
    assert (ct["segmentation_model"] == "").all() and (cxr["segmentation_model"] == "segmentation.unet").all()
    assert not (run / "masks" / "ct").exists() and (run / "masks" / "cxr" / "x0.png").exists()
    assert (run / "gradcam" / "basic_cnn" / "ct" / "s0.png").exists()
    classification = pd.read_csv(run / "external_classification_metrics.csv")
    assert set(classification["model"]) == {"classification.simple_cnn_scratch", "ct_classification.basic_cnn"}
    assert set(classification.loc[classification["class"] != "macro", "support"]) <= {0, 2}


def test_inference_on_a_dask_cluster_writes_the_same_run(inference_project, tmp_path):
    """`--params=compute.dask.scheduler_address=local`: the catalog's loaders travel to the
    workers, and the run folder is the same as the default (threads) run's. Two runs in one
    process, as in a notebook: the first leaves no MLflow run active behind it."""
    import mlflow

    from covid_imaging.compute import close_dask_clients

    source = tmp_path / "new"
    write_images(source)
    runs = {}
    for name, compute in (("threads", {}), ("dask", {"compute.dask.scheduler_address": "local",
                                                     "compute.dask.n_workers": 2})):
        output = tmp_path / name
        try:
            run_kedro(inference_project, "inference", params={
                **TINY_PARAMS, **compute, "inference.source": str(source), "inference.output": str(output),
            })
        finally:
            close_dask_clients()
        assert mlflow.active_run() is None
        runs[name] = _run_folder(output)
    files = {name: sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) for name, run in runs.items()}
    assert files["dask"] == files["threads"] and "masks/a.png" in files["threads"]
    for relative in files["threads"]:
        if relative.endswith(".png") or relative == "predictions.csv":
            assert (runs["dask"] / relative).read_bytes() == (runs["threads"] / relative).read_bytes(), relative
    rejected = pd.read_csv(runs["dask"] / "rejected_files.csv")
    assert list(rejected["file"].str.rsplit("/", n=1).str[-1]) == ["broken.png"]
