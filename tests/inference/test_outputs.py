"""The external classification metrics of an inference run: per-patient resampling."""

from types import SimpleNamespace

import numpy as np

from covid_imaging.inference.engine import ImageResult
from covid_imaging.inference.outputs import external_classification_table
from covid_imaging.registry import ModelSpec, load_registry


def test_external_metrics_resample_patients_by_the_ingestion_file_name_rules():
    """Kermany names carry the patient (``person<n>_...``): three films of person 1 and two
    of person 2 are two units of the bootstrap, the other images one each."""
    classes = ("normal", "bacterial")
    keys_and_labels = [("person1_bacteria_1.jpeg", "bacterial"), ("person1_bacteria_2.jpeg", "bacterial"),
                       ("person1_bacteria_3.jpeg", "bacterial"), ("person2_bacteria_4.jpeg", "bacterial"),
                       ("person2_bacteria_5.jpeg", "bacterial"), ("IM-0001-0001.jpeg", "normal"),
                       ("IM-0002-0001.jpeg", "normal"), ("IM-0003-0001.jpeg", "normal")]
    model = SimpleNamespace(namespace="classification.simple_cnn_pneumonia", version="v1",
                            spec=ModelSpec("cxr_classification", "m", "simple_cnn", 64, classes))
    results = [
        ImageResult(row={"image_key": key, "source": "kermany", "label": label},
                    probabilities={model.namespace: np.array([0.3, 0.7]) if k % 3 else np.array([0.6, 0.4])})
        for k, (key, label) in enumerate(keys_and_labels)
    ]
    table = external_classification_table(results, SimpleNamespace(classifiers=[model]), 50, 0.95, 0)
    overall = table[table["scope"] == "overall"]
    assert set(overall["n"]) == {8} and set(overall["n_clusters"]) == {5}
    assert set(table["model"]) == {model.namespace}


def test_external_metrics_resample_the_ingestion_groups_where_the_rows_carry_them():
    """A configured patient_metadata file decides the groups at ingestion: four films
    with unrelated names from two patients are two units, not four."""
    classes = ("normal", "covid")
    model = SimpleNamespace(namespace="classification.m", version="v1", spec=ModelSpec("cxr_classification", "m", "simple_cnn", 64, classes))
    rows = [{"image_key": f"scan_{k}.png", "source": "hospital", "label": classes[k % 2], "group_id": f"hospital:p{k // 2}"}
            for k in range(4)]
    results = [ImageResult(row=row, probabilities={model.namespace: np.array([0.4, 0.6])}) for row in rows]
    table = external_classification_table(results, SimpleNamespace(classifiers=[model]), 20, 0.95, 0)
    assert set(table.loc[table["scope"] == "overall", "n_clusters"]) == {2}
    for row in rows:  # without groups (not from ingestion): the file-name rules, one image each here
        del row["group_id"]
    table = external_classification_table(results, SimpleNamespace(classifiers=[model]), 20, 0.95, 0)
    assert set(table.loc[table["scope"] == "overall", "n_clusters"]) == {4}


def test_external_metrics_count_labels_by_the_models_class_groups():
    """simple_cnn_mixed's pneumonia class is Kermany bacterial + viral + NIH pneumonia
    (data.class_groups): bacterial and viral films are scored as pneumonia, as in training."""
    spec = load_registry().get("cxr_classification", "simple_cnn_mixed")
    assert spec.classes == ("normal", "pneumonia", "covid")
    assert spec.class_of("bacterial") == spec.class_of("viral") == "pneumonia" and spec.class_of("lymphoma") is None
    model = SimpleNamespace(namespace=spec.namespace, version="v1", spec=spec)
    labels = ["normal", "bacterial", "viral", "covid", "lymphoma"]
    results = [ImageResult(row={"image_key": f"x{k}.png", "source": "h", "label": label, "group_id": f"p{k}"},
                           probabilities={spec.namespace: np.array([0.2, 0.5, 0.3])}) for k, label in enumerate(labels)]
    table = external_classification_table(results, SimpleNamespace(classifiers=[model]), 20, 0.95, 0)
    overall = table[table["scope"] == "overall"].set_index(["class", "metric"])
    assert set(table.loc[table["scope"] == "overall", "n"]) == {4}  # not lymphoma, a label of no class
    assert overall.loc[("macro", "accuracy"), "value"] == 0.5  # the two pneumonia films are right
