"""Group ids derived from file names and metadata (documented rules)."""

import pandas as pd
import pytest

from covid_imaging.pipelines.ingestion.groups import (
    assign_group_ids,
    consecutive_number_runs,
    group_from_file_name,
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
    assert groups.iloc[4] == "ieee8023:patient320"
