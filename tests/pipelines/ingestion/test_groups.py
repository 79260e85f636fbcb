"""Group ids derived from file names and metadata (documented rules)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covid_imaging.pipelines.ingestion.groups import (
    assign_group_ids,
    consecutive_number_runs,
    group_from_file_name,
    linked_number_runs,
    sarscov2_slice,
)


@pytest.mark.parametrize(
    ("key", "source", "expected"),
    [
        ("cxr_segmentation/shenzhen/images/CHNCXR_0001_0.png", "shenzhen", "shenzhen:0001"),
        ("bacterial/kermany__person1054_bacteria_2988.jpeg", "kermany", "kermany:person1054"),
        ("normal/kermany__IM-0129-0001.jpeg", "kermany", "kermany:IM-0129"),
        ("normal/kermany__NORMAL2-IM-0851-0001-0002.jpeg", "kermany", "kermany:NORMAL2-IM-0851"),
        ("ct/covid/2020.02.10.20021584-p6-52_13.png", "ucsd", "ucsd:2020.02.10.20021584"),
        ("ct/covid/2020.02.26.20026989-p34-114_1_0.png", "ucsd", "ucsd:2020.02.26.20026989"),
        ("cxr/covid/images/synthetic_cxr_p0007_1.png", "synthetic_demo", "synthetic_demo:p0007"),
        ("c19rad__COVID-1041.png", "c19rad", "c19rad:COVID-1041"),
    ],
)
def test_group_from_file_name(key, source, expected):
    assert group_from_file_name(key, source) == expected


def test_consecutive_runs():
    assert consecutive_number_runs([1061, 5, 1059, 1060, 7, 6, 12]) == {
        5: 5, 6: 5, 7: 5, 12: 12, 1059: 1059, 1060: 1059, 1061: 1059,
    }


def test_numbered_ct_slices_group_by_runs_and_metadata_wins():
    candidates = pd.DataFrame(
        {
            "image_key": ["ct/non_covid/1059.png", "ct/non_covid/1060.png", "ct/non_covid/1061_2.jpg",
                          "ct/non_covid/2000.png", "cls/ieee8023__fig1.png"],
            "source": ["ucsd"] * 4 + ["ieee8023"],
        }
    )
    groups = assign_group_ids(candidates, {"cls/ieee8023__fig1.png": "320"})
    assert groups.iloc[0] == groups.iloc[1] == groups.iloc[2] != groups.iloc[3]
    assert groups.iloc[4] == "patient:320"


def test_one_patient_is_one_group_across_sources():
    """ieee8023 patients have images in two manifest sources (ieee8023, ieee8023_v7): the
    metadata's patient id is one id space, so both images are one group (no leakage)."""
    candidates = pd.DataFrame({"image_key": ["cls/a.png", "seg/b.png", "seg/c.png"],
                               "source": ["ieee8023", "ieee8023_v7", "ieee8023_v7"]})
    groups = assign_group_ids(candidates, {"cls/a.png": "318", "seg/b.png": "318", "seg/c.png": "319"})
    assert groups.iloc[0] == groups.iloc[1] != groups.iloc[2]


# ---------------------------------------------------------------- SARS-CoV-2 CT slices


def test_linked_number_runs_chain_close_numbers_and_cut_long_runs():
    assert linked_number_runs([131, 140, 190, 300, 350, 2]) == {
        2: "run2", 131: "run131", 140: "run131", 190: "run131", 300: "run300", 350: "run300",
    }
    dense = linked_number_runs(list(range(1, 402)))  # a dense copy: one chained run of 401 numbers
    assert dense[1] == dense[50] == "run1-block0" and dense[51] == "run1-block1" and dense[401] == "run1-block8"


@pytest.mark.parametrize(
    ("stem", "expected"),
    [("Covid_131", ("Covid", 131)), ("Non-Covid_7", ("Non-Covid", 7)), ("Covid (1252)", ("Covid", 1252)),
     ("Covid_x", None), ("1059", None)],
)
def test_sarscov2_slice_names(stem, expected):
    assert sarscov2_slice(stem) == expected


def _sarscov2_candidates(numbers_by_class: dict[str, list[int]]) -> pd.DataFrame:
    folders = {"Covid": "covid", "Non-Covid": "non_covid"}
    rows = [
        {"image_key": f"ct_sarscov2/{folders[token]}/sarscov2__{token}_{n}.png", "source": "sarscov2_ct",
         "label": folders[token], "number": n, "token": token}
        for token, numbers in numbers_by_class.items() for n in numbers
    ]
    return pd.DataFrame(rows)


def test_sarscov2_groups_per_class_by_linked_runs():
    candidates = _sarscov2_candidates({"Covid": [2, 7, 34, 131, 133], "Non-Covid": [2, 7, 200]})
    groups = assign_group_ids(candidates)
    assert list(groups) == [
        "sarscov2_ct:Covid:run2", "sarscov2_ct:Covid:run2", "sarscov2_ct:Covid:run2",
        "sarscov2_ct:Covid:run131", "sarscov2_ct:Covid:run131",
        "sarscov2_ct:Non-Covid:run2", "sarscov2_ct:Non-Covid:run2", "sarscov2_ct:Non-Covid:run200",
    ]


def _assert_no_scan_in_two_splits(candidates: pd.DataFrame) -> pd.DataFrame:
    from covid_imaging.pipelines.splits.nodes import make_splits

    manifest = candidates.assign(
        image_id=[f"img{i}" for i in range(len(candidates))], task="ct", group_id=assign_group_ids(candidates)
    )
    table = make_splits(manifest, {"test_fraction": 0.1, "validation_fraction": 0.2, "n_bins": 10, "n_folds": 5,
                                   "seed": 42})
    table = table.merge(manifest[["image_id", "number", "token"]], on="image_id")
    assert (table.groupby("group_id")["split"].nunique() == 1).all()  # no scan group in two splits
    # The guarantee behind the rule: slices of one scan (<= 40 numbers apart, same class)
    # are never on two sides of a split.
    for _, rows in table.groupby("token"):
        rows = rows.sort_values("number")
        close = rows["number"].diff().le(40).to_numpy()[1:]
        changes = (rows["split"].to_numpy()[1:] != rows["split"].to_numpy()[:-1])
        assert not (close & changes).any()
    assert set(table["split"]) == {"train", "validation", "test"}
    return table


def test_no_sarscov2_scan_in_two_splits_synthetic_numbering():
    rng = np.random.default_rng(0)
    numbers = {}
    for token in ("Covid", "Non-Covid"):
        # scans of 10-40 slices, sampled sparsely, separated by held-out gaps of 70-120 numbers
        start, sampled = 1, []
        for _ in range(14):
            length = int(rng.integers(10, 41))
            sampled += sorted(rng.choice(np.arange(start, start + length), size=length // 3, replace=False).tolist())
            start += length + int(rng.integers(70, 121))
        numbers[token] = sampled
    _assert_no_scan_in_two_splits(_sarscov2_candidates(numbers))


def test_no_sarscov2_scan_in_two_splits_curated_copy(shared_data):
    manifest = pd.read_csv(shared_data / "manifest.csv", keep_default_na=False)
    rows = manifest[manifest["source"] == "sarscov2_ct"]
    parsed = [sarscov2_slice(Path(path).stem.split("__", 1)[1]) for path in rows["path"]]
    candidates = pd.DataFrame({"image_key": rows["path"].to_numpy(), "source": "sarscov2_ct",
                               "label": rows["label"].to_numpy(), "token": [p[0] for p in parsed],
                               "number": [p[1] for p in parsed]})
    table = _assert_no_scan_in_two_splits(candidates)
    assert table["group_id"].nunique() == 13  # 7 COVID + 6 non-COVID runs (gaps <= 18 or >= 72)
