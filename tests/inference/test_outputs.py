"""The external classification metrics of an inference run: per-patient resampling."""

from types import SimpleNamespace

import numpy as np

from covid_imaging.inference.engine import ImageResult
from covid_imaging.inference.outputs import external_classification_table


def test_external_metrics_resample_patients_by_the_ingestion_file_name_rules():
    """Kermany names carry the patient (``person<n>_...``): three films of person 1 and two
    of person 2 are two units of the bootstrap, the other images one each."""
    classes = ("normal", "bacterial")
    keys_and_labels = [("person1_bacteria_1.jpeg", "bacterial"), ("person1_bacteria_2.jpeg", "bacterial"),
                       ("person1_bacteria_3.jpeg", "bacterial"), ("person2_bacteria_4.jpeg", "bacterial"),
                       ("person2_bacteria_5.jpeg", "bacterial"), ("IM-0001-0001.jpeg", "normal"),
                       ("IM-0002-0001.jpeg", "normal"), ("IM-0003-0001.jpeg", "normal")]
    model = SimpleNamespace(namespace="classification.simple_cnn_pneumonia", version="v1",
                            spec=SimpleNamespace(classes=classes))
    results = [
        ImageResult(row={"image_key": key, "source": "kermany", "label": label},
                    probabilities={model.namespace: np.array([0.3, 0.7]) if k % 3 else np.array([0.6, 0.4])})
        for k, (key, label) in enumerate(keys_and_labels)
    ]
    table = external_classification_table(results, SimpleNamespace(classifiers=[model]), 50, 0.95, 0)
    overall = table[table["scope"] == "overall"]
    assert set(overall["n"]) == {8} and set(overall["n_clusters"]) == {5}
    assert set(table["model"]) == {model.namespace}
