"""Seeded, time-bounded fuzz test: hostile files mixed into good ones, through ingestion.

Asserts what the README promises for bad input: no traceback; every bad file listed
with the file and a reason naming the problem (and a severity); the good files give
exactly the rows of a clean run; strict mode stops at the first bad file without
decoding the rest; peak memory stays bounded whatever the files declare.

``COVID_FUZZ_SEED`` picks another seed (the default one runs in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.pipelines.ingestion.nodes import IngestionError, build_manifest, display_key
from tests.conftest import PROJECT_ROOT
from tests.fuzz.bad_inputs import build_folder, build_hostile_files

SEED = int(os.environ.get("COVID_FUZZ_SEED", "20240609"))
TIME_LIMIT_S = 60


def raw_files(root: Path) -> dict:
    return PartitionedDataset(path=str(root), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset").load()


def params(root: Path, **overrides) -> dict:
    return {"raw_location": str(root), "layout": "paired_folders", "task": "segmentation", "source": "fuzz", **overrides}


@pytest.fixture
def clean_and_hostile(tmp_path: Path):
    """(folder, clean manifest): the same folder before and after adding the hostile files."""
    root = tmp_path / "raw"
    folder = build_folder(root, SEED, hostile=False)
    clean, clean_rejected = build_manifest(raw_files(root), params(root))
    assert clean_rejected.empty and len(clean) == len(folder.good_keys)
    build_hostile_files(folder)
    return folder, clean


def test_hostile_files_are_all_reported_and_the_good_files_are_unchanged(clean_and_hostile):
    started = time.monotonic()
    folder, clean = clean_and_hostile
    root = folder.root
    kinds = {case.kind for case in folder.cases}
    assert len(kinds) >= 40, f"only {len(kinds)} kinds of bad input"

    manifest, rejected = build_manifest(raw_files(root), params(root))  # must not raise

    rows_by_file = {file: group for file, group in rejected.groupby("file")}
    accepted = set(manifest["image_key"])
    for case in folder.cases:
        uri = f"{root}/{display_key(case.key)}"
        rows = rows_by_file.get(uri)
        if case.expect == "accepted":
            assert case.key in accepted and rows is None, (case.kind, rows)
        elif case.expect == "no_crash":  # undetectable damage: used, or rejected with a reason
            assert case.key in accepted or (rows is not None and (rows["severity"] == "error").all()), case.kind
        else:
            assert rows is not None, f"{case.kind}: {case.key} is not in the rejected-files report"
            assert rows["severity"].tolist() == [case.expect], (case.kind, rows.to_dict("records"))
            assert case.reason in rows["reason"].iloc[0], (case.kind, rows["reason"].iloc[0])
    expected_files = {f"{root}/{display_key(case.key)}" for case in folder.cases}
    unexplained = set(rejected["file"]) - expected_files
    assert not unexplained, f"rows for files that are not bad: {unexplained}"
    assert rejected["reason"].str.len().gt(10).all()

    # Errors are not used; warnings are used; the good files give the clean run's rows.
    errors = rejected[rejected["severity"] == "error"]
    assert not set(errors["image_key"]) & accepted
    good = manifest.set_index("image_key").loc[clean["image_key"]].reset_index()
    pd.testing.assert_frame_equal(good[clean.columns], clean)
    assert manifest["image_id"].is_unique
    assert {"images/odd_twin.png", "images/odd_twin.jpg"} <= set(manifest["image_id"])
    odd = manifest.set_index("image_key")
    assert (odd.loc["images/odd_exif.jpg", "width"], odd.loc["images/odd_exif.jpg", "height"]) == (48, 64)
    assert odd.loc["images/odd_cmyk.jpg", "channels"] == 3
    assert time.monotonic() - started < TIME_LIMIT_S


def test_reports_with_hostile_names_round_trip_through_the_catalog_datasets(clean_and_hostile, tmp_path):
    from covid_imaging.datasets.atomic_csv import AtomicCSVDataset

    folder, _ = clean_and_hostile
    manifest, rejected = build_manifest(raw_files(folder.root), params(folder.root))
    for name, table in (("manifest.csv", manifest), ("rejected_files.csv", rejected)):
        dataset = AtomicCSVDataset(filepath=str(tmp_path / "out" / name))
        dataset.save(table)
        loaded = dataset.load()
        assert loaded["image_key"].tolist() == table["image_key"].tolist()


def test_strict_mode_stops_at_the_first_bad_file_without_decoding_the_rest(clean_and_hostile):
    folder, _ = clean_and_hostile
    root = folder.root
    files = raw_files(root)
    # A bad *name* is found by listing alone: nothing is read at all.
    loads: list[str] = []

    def counting(key, loader):
        def load():
            loads.append(key)
            return loader()
        return load

    counted = {key: counting(key, loader) for key, loader in files.items()}
    with pytest.raises(IngestionError, match=r"caf\\xe9\.png: file name is not valid UTF-8"):
        build_manifest(counted, params(root, strict=True))
    assert loads == []

    # Without it, the first bad file in listing order stops the run after at most one
    # batch of n_workers candidates (image + mask each), not after decoding all of them.
    usable = {key: loader for key, loader in counted.items() if "\udce9" not in key}
    n_candidates = sum(key.startswith("images/") for key in usable)
    with pytest.raises(IngestionError, match=r"images/animated\.png: animated PNG with 2 frames"):
        build_manifest(usable, params(root, strict=True, n_workers=2))
    assert 0 < len(loads) <= 2 * 2 + 2 < n_candidates


def test_strict_mode_fails_on_warnings_only_when_asked(clean_and_hostile):
    folder, _ = clean_and_hostile
    root = folder.root
    for key in list(root.rglob("*")):  # keep only the good pairs and one suspicious file
        relative = key.relative_to(root).as_posix()
        if key.is_symlink() or (key.is_file() and "good_" not in relative and "emptymask" not in relative):
            key.unlink()
    manifest, rejected = build_manifest(raw_files(root), params(root, strict=True))
    assert rejected["severity"].tolist() == ["warning"] and "images/emptymask.png" in set(manifest["image_key"])
    with pytest.raises(IngestionError, match=r"masks/emptymask\.png: empty mask"):
        build_manifest(raw_files(root), params(root, strict=True, warnings_as_errors=["empty_mask"]))


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, tracemalloc
    from kedro_datasets.partitions import PartitionedDataset
    from covid_imaging.pipelines.ingestion.nodes import build_manifest

    root, max_pixels = sys.argv[1], int(sys.argv[2])
    files = PartitionedDataset(path=root, dataset="covid_imaging.datasets.bytes_dataset.BytesDataset").load()
    params = {"raw_location": root, "layout": "paired_folders", "task": "segmentation", "source": "fuzz",
              "max_pixels": max_pixels, "n_workers": 4}
    build_manifest({k: v for k, v in files.items() if "good_" in k}, params)  # warm-up: imports, pools
    # tracemalloc sees file bytes and every NumPy array, including the ones OpenCV decodes into.
    tracemalloc.start()
    manifest, rejected = build_manifest(files, params)
    traced_peak = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"traced_peak_mib": traced_peak / 2**20,
                      "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "accepted": len(manifest), "rejected": len(rejected)}))
    """
)


def _peak_memory(root: Path, max_pixels: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(root), str(max_pixels)],
        capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_peak_memory_is_bounded_by_the_pixel_budget(clean_and_hostile, tmp_path):
    """Decompression bombs cost nothing; images within the budget are decoded one budget at a time."""
    import numpy as np

    from tests.fuzz.bad_inputs import png

    folder, _ = clean_and_hostile
    hostile = _peak_memory(folder.root, 50_000_000)
    # The bombs declare 900 M, 256 M, 4,225 M and 3,600 M pixels (GBs if decoded).
    assert hostile["traced_peak_mib"] < 20, hostile

    # Four 16-bit RGBA images of 2,000 x 2,000 (30.5 MiB each when decoded, 6 MB as PNG)
    # with a budget of 4.5 M pixels: the gate lets only one decode at a time although
    # there are 4 workers (without it the peak is about 4 decoded images).
    big = tmp_path / "big"
    (big / "images").mkdir(parents=True)
    (big / "masks").mkdir()
    for i in range(4):
        ramp = np.broadcast_to((np.arange(2000, dtype=np.uint16) * 30 + i)[None, :, None], (2000, 2000, 4))
        (big / "images" / f"big_{i}.png").write_bytes(png(np.ascontiguousarray(ramp)))
        (big / "masks" / f"big_{i}.png").write_bytes(png(np.zeros((20, 20), np.uint8)))
    (big / "images" / "good_0.png").write_bytes(png(np.zeros((20, 20), np.uint8)))
    (big / "masks" / "good_0.png").write_bytes(png(np.zeros((20, 20), np.uint8)))
    one_image_mib = 2000 * 2000 * 8 / 2**20
    within = _peak_memory(big, 4_500_000)
    assert within["accepted"] == 5, within
    assert within["traced_peak_mib"] < 1.2 * one_image_mib + 4 * 6, within
