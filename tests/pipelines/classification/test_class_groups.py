"""data.class_groups: classes made of several manifest labels (the mixed-source task)."""

from __future__ import annotations

import pandas as pd
import pytest

from covid_imaging.pipelines.classification.nodes import _rows, checked_data

MIXED = checked_data({"image_size": 64, "classes": ["normal", "pneumonia", "covid"],
                      "class_groups": {"pneumonia": ["bacterial", "viral", "pneumonia"]}})


def _table() -> pd.DataFrame:
    labels = ["normal", "bacterial", "viral", "pneumonia", "covid", "tuberculosis"]
    return pd.DataFrame({"image_id": labels, "label": labels, "split": "test", "in_training_sample": False,
                         "source": ["nih", "kermany", "kermany", "nih", "c19rad", "shenzhen"]})


def test_grouped_labels_become_the_class_and_keep_their_manifest_label():
    rows = _rows(_table(), MIXED, "test")
    assert rows["label"].tolist() == ["normal", "pneumonia", "pneumonia", "pneumonia", "covid"]
    assert rows["manifest_label"].tolist() == ["normal", "bacterial", "viral", "pneumonia", "covid"]


def test_without_groups_labels_are_classes():
    rows = _rows(_table(), {**MIXED, "classes": ["normal", "pneumonia"], "class_groups": None}, "test")
    assert rows["label"].tolist() == ["normal", "pneumonia"] and "manifest_label" not in rows


@pytest.mark.parametrize(
    ("groups", "message"),
    [({"bacteria": ["bacterial"]}, "not in data.classes"),
     ({"pneumonia": ["viral"], "covid": ["viral"]}, "in both")],
)
def test_bad_groups_are_named(groups, message):
    with pytest.raises(ValueError, match=message):
        _rows(_table(), {**MIXED, "class_groups": groups}, "test")


def test_undersampling_can_be_switched_off_for_class_weights():
    table = _table().assign(split="train", in_training_sample=[True, False, False, True, True, True])
    assert len(_rows(table, MIXED, "train")) == 3
    assert len(_rows(table, {**MIXED, "undersample": False}, "train")) == 5
