"""Seeded fuzz test of PREPROCESSING: the hostile raw folder of ``bad_inputs``, ingested and preprocessed.

The same generators as ``test_ingestion_fuzz`` build good pairs plus every bad or odd
kind; ingestion and the preprocessing nodes (``preprocess_images``, then
``build_model_input_table``) run on it with the real parameters of
``conf/base/parameters/*.yml``, and the images are saved through the catalog's dataset
(``SwappedPartitionedDataset``, lazy saving). Asserts: no exception; every image
ingestion accepted, the legal oddities included (1/2/4-bit, interlaced, palette, 16-bit,
gray+alpha PNG; CMYK, progressive, EXIF-rotated JPEG; 1/8/32-bit DICOM; a 4000 x 3
sliver; hostile file names), gives a preprocessed PNG of ``resize.size``² that decodes,
and its mask a binary {0, 255} PNG of the same size whose foreground lies in the image's
content box; the good files' PNGs are byte for byte those of a clean run over the good
files alone; the model input table names only files that exist; peak memory of the
stage stays bounded. (There is no inference pipeline yet, so no inference stage here.)

``COVID_FUZZ_SEED`` picks another seed (the default one runs in CI).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from covid_imaging.datasets.swapped_partitions import SwappedPartitionedDataset
from covid_imaging.imaging.preprocessing import square_geometry
from covid_imaging.pipelines.ingestion.nodes import build_manifest
from covid_imaging.pipelines.preprocessing.nodes import build_model_input_table, preprocess_images
from covid_imaging.pipelines.splits.nodes import make_splits, undersample_training_split
from tests.conftest import PROJECT_ROOT
from tests.fuzz.bad_inputs import HostileFolder, build_folder, build_hostile_files, png
from tests.fuzz.test_ingestion_fuzz import SEED, raw_files

TIME_LIMIT_S = 30
PARAMETERS = PROJECT_ROOT / "conf" / "base" / "parameters"


def conf_params(name: str) -> dict:
    return yaml.safe_load((PARAMETERS / f"{name}.yml").read_text())[name]


def ingestion_params(root: Path) -> dict:
    return {**conf_params("ingestion"), "raw_location": str(root), "layout": "paired_folders",
            "task": "segmentation", "source": "fuzz", "parts": []}


def preprocessing_params(out: Path) -> dict:
    return {**conf_params("preprocessing"), "output_root": str(out)}


def folder_dataset(out: Path) -> SwappedPartitionedDataset:
    """What ``preprocessed_images`` is in conf/base/catalog.yml, at ``out``."""
    return SwappedPartitionedDataset(path=str(out), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset",
                                     filename_suffix=".png", overwrite=True)


def prepare(root: Path, out: Path):
    """Ingestion, splits and preprocessing as data_preparation runs them: (manifest, table, {key: PNG bytes})."""
    files = raw_files(root)
    manifest, _ = build_manifest(files, ingestion_params(root))
    splits = undersample_training_split(make_splits(manifest, conf_params("splits")), conf_params("splits"))
    params = preprocessing_params(out)
    dataset = folder_dataset(out)
    dataset.save(preprocess_images(manifest, files, params))
    saved = dataset.load()
    table = build_model_input_table(manifest, splits, saved, params)
    return manifest, table, {key: load() for key, load in saved.items()}


def add_colour_and_tall_oddities(folder: HostileFolder) -> None:
    """Legal inputs only preprocessing needs besides ``bad_inputs``' (so its 58 kinds stay as they are)."""
    gray = folder.image()
    bgra = np.dstack([gray, gray // 2, 255 - gray, np.full_like(gray, 255)])
    folder.bad("RGBA PNG", "images/odd_rgba.png", png(bgra), expect="accepted", with_mask=True)
    folder.bad("16-bit RGBA PNG", "images/odd_rgba16.png", png(bgra.astype(np.uint16) * 257), expect="accepted",
               with_mask=True)
    folder.bad("16-bit RGB PNG, full range", "images/odd_rgb16.png", png(bgra[..., :3].astype(np.uint16) * 257),
               expect="accepted", with_mask=True)
    tall_mask = np.zeros((4000, 3), np.uint8)
    tall_mask[1000:3000, :] = 255  # all 3 columns: nearest-neighbour keeps 1 of them
    folder.bad("3x4000 image (tall sliver)", "images/odd_tall.png", png(folder.image(size=(4000, 3))), expect="warning",
               reason="extreme aspect ratio")
    folder.write("masks/odd_tall.png", png(tall_mask))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(folder, clean run, hostile run, seconds for the hostile run) over one raw folder."""
    tmp = tmp_path_factory.mktemp("preprocessing_fuzz")
    root = tmp / "raw"
    folder = build_folder(root, SEED, hostile=False)
    clean = prepare(root, tmp / "clean")
    build_hostile_files(folder)
    add_colour_and_tall_oddities(folder)
    started = time.monotonic()
    hostile = prepare(root, tmp / "hostile")  # must not raise
    return folder, clean, hostile, time.monotonic() - started


def decode_png(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    return pixels


def test_every_accepted_image_and_mask_is_preprocessed_to_the_configured_square(runs):
    folder, _, (manifest, _, outputs), seconds = runs
    size = int(conf_params("preprocessing")["resize"]["size"])
    mode = conf_params("preprocessing")["resize"]["mode"]
    accepted = set(manifest["image_key"])
    slivers = {"images/sliver.png", "images/odd_tall.png"}  # 4000 x 3 and 3 x 4000: warnings, still used
    legal = [case for case in folder.cases if case.expect == "accepted" or case.key in slivers]
    assert all(case.key in accepted for case in legal), [case.kind for case in legal if case.key not in accepted]
    kinds_reaching = {case.kind for case in folder.cases if case.key in accepted or
                      (case.key.startswith("masks/") and f"images/{Path(case.key).stem}.png" in accepted)}
    print(f"{len(kinds_reaching)} kinds of odd or bad input reach preprocessing")
    assert len(kinds_reaching) >= 25, sorted(kinds_reaching)
    # one image per accepted row, one mask per row with a mask, nothing else
    expected = {f"images/{i}" for i in manifest["image_id"]} | {
        f"masks/{i}" for i, mask in zip(manifest["image_id"], manifest["mask_key"], strict=True) if mask}
    assert set(outputs) == expected

    for row in manifest.itertuples(index=False):
        image = decode_png(outputs[f"images/{row.image_id}"])
        assert image.shape == (size, size) and image.dtype == np.uint8, (row.image_key, image.shape)
        assert image.max() > image.min(), f"{row.image_key}: preprocessed to a constant image"
        if not row.mask_key:
            continue
        mask = decode_png(outputs[f"masks/{row.image_id}"])
        assert mask.shape == (size, size) and mask.dtype == np.uint8, (row.mask_key, mask.shape)
        assert set(np.unique(mask)) <= {0, 255}, (row.mask_key, np.unique(mask))
        # the mask lands inside the image's content box (EXIF rotation, sliver, twins)
        box = square_geometry(int(row.height), int(row.width), size, mode)
        outside = mask.copy()
        outside[box.top : box.top + box.content_height, box.left : box.left + box.content_width] = 0
        assert not outside.any(), f"{row.mask_key}: foreground outside the content box {box}"
        if "emptymask" not in row.mask_key:
            assert (mask == 255).any(), f"{row.mask_key}: foreground lost"
    assert seconds < TIME_LIMIT_S


def test_the_good_files_give_exactly_the_clean_runs_pngs(runs):
    folder, (clean_manifest, clean_table, clean_outputs), (manifest, table, outputs), _ = runs
    assert set(clean_manifest["image_key"]) == set(folder.good_keys)
    assert set(clean_outputs) <= set(outputs)
    for key, data in clean_outputs.items():
        assert outputs[key] == data, f"{key}: differs from the clean run"
    # the table has the clean run's paths for the good images
    columns = ["image_id", "image_key", "mask_key", "width", "height"]
    good = table[table["image_key"].isin(folder.good_keys)].sort_values("image_id")[columns].reset_index(drop=True)
    assert good.equals(clean_table.sort_values("image_id")[columns].reset_index(drop=True))


def test_the_model_input_table_names_only_existing_preprocessed_files(runs):
    _, _, (manifest, table, _), _ = runs
    assert sorted(table["image_id"]) == sorted(manifest["image_id"])
    for column in ("image_path", "mask_path"):
        paths = [path for path in table[column] if path]
        missing = [path for path in paths if not Path(path).is_file()]
        assert not missing, missing
    assert (table["mask_path"] != "").sum() == (manifest["mask_key"] != "").sum()


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    from kedro_datasets.partitions import PartitionedDataset
    from covid_imaging.datasets.swapped_partitions import SwappedPartitionedDataset
    from covid_imaging.pipelines.ingestion.nodes import build_manifest
    from covid_imaging.pipelines.preprocessing.nodes import preprocess_images

    out, ingestion, preprocessing = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    dataset = SwappedPartitionedDataset(path=out, dataset="covid_imaging.datasets.bytes_dataset.BytesDataset",
                                        filename_suffix=".png", overwrite=True)
    result = {}
    for name, root in zip(("hostile", "big"), sys.argv[4:], strict=True):
        files = PartitionedDataset(path=root, dataset="covid_imaging.datasets.bytes_dataset.BytesDataset").load()
        manifest, _ = build_manifest(files, {**ingestion, "raw_location": root})
        # warm-up (imports: pydicom for the DICOMs, fsspec), then the measured stage
        # one image at a time: the serial backend (the threads backend holds one per worker)
        serial = {"backend": "serial"}
        dataset.save(preprocess_images(manifest.head(1), files, preprocessing, serial))
        dataset.save(preprocess_images(manifest[manifest["image_key"].str.endswith(".dcm")], files, preprocessing, serial))
        tracemalloc.start()
        dataset.save(preprocess_images(manifest, files, preprocessing, serial))  # lazy saving, as Kedro does
        result[name] = {"images": len(manifest), "traced_peak_mib": tracemalloc.get_traced_memory()[1] / 2**20}
        tracemalloc.stop()
    result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))
    """
)
N_BIG = 4


def test_peak_memory_of_preprocessing_is_bounded(runs, tmp_path):
    """Lazy saving: one image in memory at a time (tracemalloc sees every NumPy array).

    The hostile folder's images are small; four 16-bit RGBA images of 2,000 x 2,000
    (30.5 MiB each when decoded) show that the stage holds one of them at a time. One
    image's working set is 2.25 decoded images (68.7 MiB): the decoded RGBA array, its
    16-bit gray and two float32 copies while it is scaled to 8 bits (imaging.io).
    """
    folder, _, _, _ = runs
    big = tmp_path / "big"
    for i in range(N_BIG):
        ramp = np.broadcast_to((np.arange(2000, dtype=np.uint16) * 30 + i)[None, :, None], (2000, 2000, 4))
        (big / "images").mkdir(parents=True, exist_ok=True)
        (big / "images" / f"big_{i}.png").write_bytes(png(np.ascontiguousarray(ramp)))
        (big / "masks").mkdir(exist_ok=True)
        (big / "masks" / f"big_{i}.png").write_bytes(png(np.pad(np.full((10, 10), 255, np.uint8), 5)))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(out), json.dumps(ingestion_params(folder.root)),
         json.dumps(preprocessing_params(out)), str(folder.root), str(big)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print("preprocessing peak memory:", measured)
    assert measured["hostile"]["images"] >= 30 and measured["big"]["images"] == N_BIG, measured
    assert measured["hostile"]["traced_peak_mib"] < 4, measured
    one_decoded = 2000 * 2000 * 4 * 2 / 2**20
    assert measured["big"]["traced_peak_mib"] < 2.5 * one_decoded < N_BIG * one_decoded, measured
