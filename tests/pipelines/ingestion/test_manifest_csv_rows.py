"""Messy manifest CSVs: every unusable row is reported with the manifest line, never a traceback."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_imaging.pipelines.ingestion.nodes import IngestionError, build_manifest
from tests.conftest import chest_like_image, lung_mask, write_png
from tests.pipelines.ingestion.test_nodes import raw_files


def params(root, **overrides) -> dict:
    return {"raw_location": str(root), "layout": "manifest_csv", "manifest_file": "manifest.csv",
            "task": "classification", "source": "test", **overrides}


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    for i, name in enumerate(("a.png", "b.png", "c.png", "d.png", "z_first.png")):
        write_png(data / "cls" / name, chest_like_image(seed=i))
    (data / "cls" / "a_copy.png").write_bytes((data / "cls" / "z_first.png").read_bytes())
    write_png(tmp_path / "outside.png", chest_like_image(seed=9))
    return data


def write_manifest(root, rows: list[tuple[str, str]], extra: str = "") -> None:
    table = pd.DataFrame(rows, columns=["path", "label"])
    (root / "manifest.csv").write_text(table.to_csv(index=False) + extra, encoding="utf-8")


def test_unusable_rows_are_reported_with_their_line_and_the_rest_is_used(root):
    write_manifest(root, [
        ("./cls/a.png", " Normal "),       # line 2: ./ prefix and label spacing/case are fine
        ("", "normal"),                    # 3: empty path
        ("../outside.png", "normal"),      # 4: exists, but outside the data root
        ("/etc/hostname", "normal"),       # 5: absolute, outside
        ("cls/b.png", "  "),               # 6: empty label
        ("cls/a.png", "normal"),           # 7: listed twice
        ("cls/missing.png", "covid"),      # 8: not found
        ("cls/" + "x" * 5000 + ".png", "covid"),  # 9: longer than any path
        ("cls/c.png", "COVID-19"),         # 10
        ("cls/d.png", "covid 19"),         # 11: near-duplicate label of line 10
    ])
    manifest, rejected = build_manifest(raw_files(root), params(root))
    assert dict(zip(manifest["image_key"], manifest["label"], strict=True)) == {
        "cls/a.png": "normal", "cls/c.png": "covid-19", "cls/d.png": "covid 19"}
    reasons = rejected["reason"].tolist()
    manifest_uri = f"{root}/manifest.csv"
    expected = [
        (manifest_uri, "line 3: empty path", "error"),
        (manifest_uri, "line 4: path '../outside.png' is outside the data root", "error"),
        (manifest_uri, "line 5: path '/etc/hostname' is outside the data root", "error"),
        (manifest_uri, "line 6: empty label for cls/b.png", "error"),
        (manifest_uri, "line 7: cls/a.png is already listed on line 2", "error"),
        (manifest_uri, "line 9: path of 5,008 bytes, longer than any file path can be", "error"),
    ]
    assert list(zip(rejected["file"], reasons, rejected["severity"], strict=False))[:6] == expected
    near = rejected[rejected["severity"] == "warning"]
    assert near["file"].tolist() == [f"{root}/cls/d.png"]
    assert "'covid 19' differs from label 'covid-19' only in punctuation or spaces" in near["reason"].iloc[0]
    missing = rejected[rejected["file"] == f"{root}/cls/missing.png"]
    assert missing["reason"].tolist() == ["file listed but not found in the raw data"]


def test_of_two_identical_files_the_first_listed_is_kept(root):
    write_manifest(root, [("cls/z_first.png", "normal"), ("cls/a_copy.png", "normal")])
    manifest, rejected = build_manifest(raw_files(root), params(root))
    assert manifest["image_key"].tolist() == ["cls/z_first.png"]
    assert rejected["reason"].tolist() == ["exact duplicate (same SHA-256) of cls/z_first.png"]
    assert rejected["file"].tolist() == [f"{root}/cls/a_copy.png"]


def test_absolute_paths_inside_the_data_root_are_accepted(root):
    write_manifest(root, [(f"{root}/cls/a.png", "normal")])
    manifest, rejected = build_manifest(raw_files(root), params(root))
    assert manifest["image_key"].tolist() == ["cls/a.png"] and rejected.empty


def test_empty_path_in_strict_mode_names_the_manifest_line_before_decoding(root):
    write_manifest(root, [("cls/a.png", "normal"), ("", "normal")])
    with pytest.raises(IngestionError, match=r"manifest\.csv: line 3: empty path"):
        build_manifest(raw_files(root), params(root, strict=True))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,label\ncls/caf\xe9.png,normal\n".encode("latin-1"), r"manifest\.csv: not UTF-8 text \(byte 0xe9 at offset 18\)"),
        (b"name,class\ncls/a.png,normal\n", r"manifest\.csv: missing required column\(s\) \['path', 'label'\]"),
        (b"", r"manifest\.csv: cannot be parsed as CSV"),
    ],
)
def test_a_manifest_that_cannot_be_read_stops_the_run_with_one_clear_error(root, content, message):
    (root / "manifest.csv").write_bytes(content)
    with pytest.raises(IngestionError, match=message):
        build_manifest(raw_files(root), params(root))


def test_a_huge_manifest_of_bad_rows_is_reported_quickly(root):
    import time

    rows = [("cls/a.png", "normal")] + [(f"cls/missing_{i}.png", "covid") for i in range(20_000)]
    write_manifest(root, rows)
    started = time.monotonic()
    manifest, rejected = build_manifest(raw_files(root), params(root))
    assert len(manifest) == 1 and len(rejected) == 20_000
    assert time.monotonic() - started < 30


def test_labels_of_folder_layouts_are_normalised(tmp_path):
    write_png(tmp_path / "images" / "a.png", chest_like_image(seed=1))
    write_png(tmp_path / "masks" / "a.png", lung_mask())
    manifest, _ = build_manifest(raw_files(tmp_path), {"raw_location": str(tmp_path), "layout": "paired_folders",
                                                         "label": "  Pneumonia "})
    assert manifest["label"].tolist() == ["pneumonia"]


def test_unknown_ingestion_parameters_fail(tmp_path):
    write_png(tmp_path / "images" / "a.png", chest_like_image(seed=1))
    with pytest.raises(IngestionError, match="Unknown ingestion parameter 'max_pixel'"):
        build_manifest(raw_files(tmp_path), {"raw_location": str(tmp_path), "layout": "paired_folders", "max_pixel": 5})
    with pytest.raises(IngestionError, match=r"warnings_as_errors: unknown kind\(s\) \['empty'\]"):
        build_manifest(raw_files(tmp_path), {"raw_location": str(tmp_path), "layout": "paired_folders",
                                             "warnings_as_errors": ["empty"]})


def test_line_numbers_count_blank_lines(root):
    (root / "manifest.csv").write_text("path,label\ncls/a.png,normal\n\ncls/b.png,\n", encoding="utf-8")
    manifest, rejected = build_manifest(raw_files(root), params(root))
    assert manifest["image_key"].tolist() == ["cls/a.png"]
    assert rejected["reason"].tolist() == ["line 4: empty label for cls/b.png"]  # the blank line 3 is skipped
