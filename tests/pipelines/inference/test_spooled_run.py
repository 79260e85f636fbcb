"""The run folder's tables and report are written batch by batch from the on-disk spool."""

from __future__ import annotations

import os

import pandas as pd

from covid_imaging.datasets.run_folder import RunFolderDataset
from covid_imaging.inference.engine import ImageResult, InferenceModels
from covid_imaging.inference.outputs import predictions_table
from covid_imaging.pipelines.inference.nodes import (
    SpooledRun,
    resolve_inference_params,
    run_folder_contents,
)
from covid_imaging.pipelines.ingestion.nodes import REJECTED_COLUMNS


class _Engine:
    """Stands in for the inference engine: one result per row, a mask (and Dice) on odd rows only."""

    def __init__(self) -> None:
        self.calls = 0
        self.models = InferenceModels(None, ())

    def process(self, rows: pd.DataFrame, raw_files) -> tuple[list[ImageResult], list[dict[str, str]]]:
        self.calls += 1
        results = []
        for row in rows.to_dict("records"):
            index = int(row["image_id"][1:])
            values = {"image_id": row["image_id"], "image_key": row["image_key"], "source": "s", "task": "cxr",
                      "modality": "cxr", "label": "unlabelled", "lung_area_fraction": index / 10, "qc_flags": "",
                      "qc_no_lung": index == 0}
            if index % 2:
                values |= {"dice_native": 0.9 + index / 100, "iou_native": 0.8}
            results.append(ImageResult(row=values, files={f"masks/{row['image_id']}.png": b"png"},
                                       thumbnail=f"data:image/jpeg;base64,THUMB{index}"))
        return results, []


def test_tables_and_report_from_several_batches_equal_one_table(tmp_path):
    manifest = pd.DataFrame({"image_id": [f"i{k}" for k in range(7)], "image_key": [f"i{k}.png" for k in range(7)]})
    engine = _Engine()
    run = SpooledRun(manifest, {}, engine, batch_size=2)  # 4 batches; the last (i6) has no Dice column
    spool = run.spool
    params = resolve_inference_params({"source": "here"})
    rejected = pd.DataFrame([["bad.png", "cannot be decoded", "error", "bad.png", ""]], columns=REJECTED_COLUMNS)
    contents = run_folder_contents(run, rejected, InferenceModels(None, ()), params)
    dataset = RunFolderDataset(str(tmp_path / "out"))
    dataset.save(contents)
    files = dataset.load()

    expected = predictions_table([r.row for r in engine.process(manifest, {})[0]])
    written = pd.read_csv(files["predictions.csv"])
    pd.testing.assert_frame_equal(written, pd.read_csv(pd.io.common.StringIO(expected.to_csv(index=False))))
    assert files["predictions.csv"].read_text().count("image_id") == 1  # one header, whatever the batches

    per_image = pd.read_csv(files["external_segmentation_per_image.csv"])
    assert list(per_image["image_id"]) == ["i1", "i3", "i5"]
    report = files["report.html"].read_text()
    assert all(f"THUMB{k}\"" in report for k in range(7))  # every image keeps its thumbnail
    assert report.count('<tr data-image-id="') == 7 and "7 images predicted" in report and "bad.png" in report
    assert all(f"masks/i{k}.png" in files for k in range(7))
    assert not os.path.exists(spool)  # the spool is gone once the report is written


def test_the_spool_is_removed_when_a_run_is_dropped_unwritten():
    manifest = pd.DataFrame({"image_id": ["i0", "i1"], "image_key": ["i0.png", "i1.png"]})
    run = SpooledRun(manifest, {}, _Engine(), batch_size=1)
    run.batch_files(0)
    spool = run.spool
    assert os.listdir(spool)
    del run
    assert not os.path.exists(spool)
