"""Metrics against hand-computed values and scikit-learn, bootstrap CIs, tables, figures."""

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import (
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from covid_imaging.classification.evaluation import (
    TABLE_COLUMNS,
    bootstrap_metric_samples,
    classification_metrics,
    classification_report_table,
    confusion_matrix,
    macro_metrics_from_table,
    paired_metric_difference,
    percentile_interval,
    plot_confusion_matrix,
    plot_roc_curves,
)

CLASSES = ["normal", "pneumonia", "covid"]
# Rows: true class, columns: predicted class.
HAND_CONFUSION = np.array([[5, 1, 0], [2, 6, 2], [0, 1, 3]])


def labels_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(t, p) for t in range(3) for p in range(3) for _ in range(confusion[t, p])]
    y_true, y_pred = (np.array(column) for column in zip(*pairs, strict=True))
    return y_true, y_pred


def probabilities_for(y_pred: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random probabilities whose arg-max is ``y_pred``."""
    rng = np.random.default_rng(seed)
    scores = rng.random((y_pred.size, 3))
    scores[np.arange(y_pred.size), y_pred] += 1.0
    return scores / scores.sum(axis=1, keepdims=True)


@pytest.fixture
def hand_example():
    y_true, y_pred = labels_from_confusion(HAND_CONFUSION)
    return y_true, probabilities_for(y_pred)


def test_confusion_matrix_round_trips(hand_example):
    y_true, y_prob = hand_example
    np.testing.assert_array_equal(confusion_matrix(y_true, y_prob.argmax(1), 3), HAND_CONFUSION)


def test_metrics_match_hand_computed_values(hand_example):
    metrics = classification_metrics(*hand_example, CLASSES)
    # normal: TP 5, FN 1, FP 2, TN 12 of 20.
    assert metrics["normal"]["recall"] == pytest.approx(5 / 6)
    assert metrics["normal"]["specificity"] == pytest.approx(12 / 14)
    assert metrics["normal"]["precision"] == pytest.approx(5 / 7)
    assert metrics["normal"]["f1"] == pytest.approx(10 / 13)
    assert metrics["normal"]["accuracy"] == pytest.approx(17 / 20)
    assert metrics["normal"]["balanced_accuracy"] == pytest.approx((5 / 6 + 12 / 14) / 2)
    # pneumonia: TP 6, FN 4, FP 2, TN 8.  covid: TP 3, FN 1, FP 2, TN 14.
    assert metrics["pneumonia"]["specificity"] == pytest.approx(0.8)
    assert metrics["covid"]["specificity"] == pytest.approx(14 / 16)
    assert metrics["covid"]["f1"] == pytest.approx(2 / 3)
    macro = metrics["macro"]
    assert macro["accuracy"] == pytest.approx(14 / 20)
    assert macro["balanced_accuracy"] == pytest.approx((5 / 6 + 0.6 + 0.75) / 3)
    assert macro["f1"] == pytest.approx((10 / 13 + 2 / 3 + 2 / 3) / 3)
    assert macro["specificity"] == pytest.approx((12 / 14 + 0.8 + 14 / 16) / 3)


def test_metrics_agree_with_scikit_learn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 200)
    # Rounded scores create ties, which the rank-based AUC must handle like sklearn.
    y_prob = np.round(rng.dirichlet([1, 1, 1], 200) + 0.3 * np.eye(3)[y_true], 1)
    y_prob /= y_prob.sum(axis=1, keepdims=True)
    y_pred = y_prob.argmax(1)
    metrics = classification_metrics(y_true, y_prob, CLASSES)

    assert metrics["macro"]["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred)
    )
    assert metrics["macro"]["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert metrics["macro"]["precision"] == pytest.approx(
        precision_score(y_true, y_pred, average="macro")
    )
    assert metrics["macro"]["roc_auc"] == pytest.approx(
        roc_auc_score(y_true, y_prob, multi_class="ovr")
    )
    for k, name in enumerate(CLASSES):
        assert metrics[name]["roc_auc"] == pytest.approx(roc_auc_score(y_true == k, y_prob[:, k]))
        assert metrics[name]["recall"] == pytest.approx(recall_score(y_true == k, y_pred == k))


def test_absent_class_gives_nan_with_a_note_and_is_left_out_of_macro():
    y_true = np.array([0, 0, 1, 1, 0, 1])
    y_prob = probabilities_for(np.array([0, 1, 1, 1, 0, 0]))
    table = classification_report_table(y_true, y_prob, CLASSES, n_bootstrap=50)
    covid_auc = table.query("`class` == 'covid' and metric == 'roc_auc'").iloc[0]
    assert np.isnan(covid_auc["value"]) and "absent" in covid_auc["note"]
    macro_auc = table.query("`class` == 'macro' and metric == 'roc_auc'").iloc[0]
    expected = np.mean([roc_auc_score(y_true == k, y_prob[:, k]) for k in (0, 1)])
    assert macro_auc["value"] == pytest.approx(expected)
    assert macro_auc["note"]


def test_bootstrap_ci_contains_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 120)
    y_prob = rng.dirichlet([1, 1, 1], 120) + 0.5 * np.eye(3)[y_true]
    y_prob /= y_prob.sum(axis=1, keepdims=True)

    table = classification_report_table(y_true, y_prob, CLASSES, n_bootstrap=300, seed=1)
    again = classification_report_table(y_true, y_prob, CLASSES, n_bootstrap=300, seed=1)
    other = classification_report_table(y_true, y_prob, CLASSES, n_bootstrap=300, seed=2)

    assert (table["ci_low"] <= table["value"]).all() and (table["value"] <= table["ci_high"]).all()
    assert (table["ci_low"] < table["ci_high"]).all()
    np.testing.assert_array_equal(table[["ci_low", "ci_high"]], again[["ci_low", "ci_high"]])
    assert not np.array_equal(table["ci_low"], other["ci_low"])


def test_bootstrap_samples_and_percentile_interval():
    samples = bootstrap_metric_samples(
        [0, 1, 2, 0, 1, 2], np.eye(3)[[0, 1, 2, 0, 1, 1]], 3, n_bootstrap=250
    )
    assert samples["macro:accuracy"].shape == (250,)
    assert samples["recall"].shape == (250, 3)
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    assert np.isnan(percentile_interval(np.array([np.nan, np.nan]))).all()


def test_report_table_is_tidy_with_scopes_per_source(hand_example):
    y_true, y_prob = hand_example
    sources = np.where(np.arange(y_true.size) % 2 == 0, "hospital_a", "hospital_b")
    table = classification_report_table(y_true, y_prob, CLASSES, groups=sources, n_bootstrap=20)

    assert list(table.columns) == list(TABLE_COLUMNS)
    assert sorted(table["scope"].unique()) == ["hospital_a", "hospital_b", "overall"]
    assert len(table) == 3 * (len(CLASSES) + 1) * 7
    assert set(table.loc[table["scope"] == "hospital_a", "n"]) == {10}
    normal_support = table.query("scope == 'overall' and `class` == 'normal'")["support"]
    assert set(normal_support) == {6}
    overall = macro_metrics_from_table(table)
    assert overall["accuracy"] == pytest.approx(0.7)
    subset = sources == "hospital_a"
    assert macro_metrics_from_table(table, "hospital_a")["accuracy"] == pytest.approx(
        np.mean(y_prob[subset].argmax(1) == y_true[subset])
    )


def test_input_validation():
    with pytest.raises(ValueError, match="y_prob"):
        classification_metrics([0, 1], np.ones((2, 2)), CLASSES)
    with pytest.raises(ValueError, match="labels"):
        classification_metrics([0, 5], np.ones((2, 3)) / 3, CLASSES)


def test_figures_render(hand_example):
    y_true, y_prob = hand_example
    for figure in (
        plot_confusion_matrix(y_true, y_prob, CLASSES),
        plot_confusion_matrix(y_true, y_prob.argmax(1), CLASSES, normalize="true"),
        plot_roc_curves(y_true, y_prob, CLASSES),
    ):
        assert isinstance(figure, Figure)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        assert buffer.getvalue().startswith(b"\x89PNG")
    roc_axes = plot_roc_curves(y_true, y_prob, CLASSES).axes[0]
    assert len(roc_axes.get_lines()) == len(CLASSES) + 1  # one curve per class + chance


def test_normalised_confusion_plot_shows_row_fractions(hand_example):
    y_true, y_prob = hand_example
    figure = plot_confusion_matrix(y_true, y_prob, CLASSES, normalize="true")
    image = figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(np.asarray(image).sum(axis=1), 1.0)


def _noisy_predictions(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    y_prob = rng.dirichlet([1, 1, 1], n) + 0.6 * np.eye(3)[y_true]
    return y_true, y_prob / y_prob.sum(axis=1, keepdims=True)


def test_cluster_bootstrap_of_repeated_samples_equals_the_image_bootstrap_of_one_copy_each():
    """Ten slices of one scan that all say the same thing are one observation: resampling
    whole scans gives the interval of the scans alone; resampling slices pretends to have
    ten times the evidence and gives a far narrower one."""
    y_true, y_prob = _noisy_predictions(40)
    copies = 10
    y_true_slices, y_prob_slices = np.repeat(y_true, copies), np.repeat(y_prob, copies, axis=0)
    # Scans named so that sorted order is their order here (the cluster draw indexes sorted ids).
    scans = np.repeat([f"scan{k:02d}" for k in range(40)], copies)

    per_scan = bootstrap_metric_samples(y_true, y_prob, 3, n_bootstrap=100, seed=5)
    clustered = bootstrap_metric_samples(y_true_slices, y_prob_slices, 3, n_bootstrap=100, seed=5, clusters=scans)
    per_slice = bootstrap_metric_samples(y_true_slices, y_prob_slices, 3, n_bootstrap=100, seed=5)

    for key in ("macro:balanced_accuracy", "macro:roc_auc", "recall"):
        np.testing.assert_allclose(clustered[key], per_scan[key])
    width = lambda samples: np.subtract(*percentile_interval(samples["macro:balanced_accuracy"])[::-1])  # noqa: E731
    assert width(per_slice) < 0.6 * width(clustered)


def test_report_table_counts_clusters_per_scope_and_rejects_misaligned_clusters(hand_example):
    y_true, y_prob = hand_example
    sources = np.where(np.arange(y_true.size) % 2 == 0, "hospital_a", "hospital_b")
    patients = np.array([f"p{k // 4}" for k in range(y_true.size)])  # four images per patient
    table = classification_report_table(y_true, y_prob, CLASSES, groups=sources, n_bootstrap=30, clusters=patients)
    assert set(table.loc[table["scope"] == "overall", "n_clusters"]) == {len(set(patients))}
    assert set(table.loc[table["scope"] == "hospital_a", "n_clusters"]) == {len(set(patients[sources == "hospital_a"]))}
    unclustered = classification_report_table(y_true, y_prob, CLASSES, n_bootstrap=30)
    assert set(unclustered["n_clusters"]) == {y_true.size}
    with pytest.raises(ValueError, match="clusters must have shape"):
        classification_report_table(y_true, y_prob, CLASSES, n_bootstrap=30, clusters=patients[:-1])


def test_paired_difference_is_narrower_than_the_two_unpaired_intervals_and_exact_for_a_copy():
    """Two models that fail on the same hard images: the paired interval of their
    difference resamples the difference itself, so it is far narrower than the spread of
    two independent intervals; a model against itself differs by exactly 0."""
    y_true, y_prob = _noisy_predictions(200)
    better = y_prob.copy()
    fixed = np.flatnonzero(y_prob.argmax(axis=1) != y_true)[:4]  # the same model, 4 errors fixed
    better[fixed] = np.eye(3)[y_true[fixed]]
    clusters = np.repeat([f"p{k:03d}" for k in range(100)], 2)

    paired = paired_metric_difference(y_true, better, y_prob, 3, n_bootstrap=300, seed=1, clusters=clusters)
    point = balanced_accuracy_score(y_true, better.argmax(1)) - balanced_accuracy_score(y_true, y_prob.argmax(1))
    assert paired["difference"] == pytest.approx(point) and point > 0
    assert 0 < paired["ci_low"] <= paired["difference"] <= paired["ci_high"]  # fixing errors only helps
    assert paired["share_of_resamples_ahead"] > 0.95
    # unpaired: each model scored on its own resamples
    unpaired = (bootstrap_metric_samples(y_true, better, 3, n_bootstrap=300, seed=1, clusters=clusters)
                ["macro:balanced_accuracy"]
                - bootstrap_metric_samples(y_true, y_prob, 3, n_bootstrap=300, seed=2, clusters=clusters)
                ["macro:balanced_accuracy"])
    low, high = percentile_interval(unpaired)
    # unpaired, the gain is lost in each model's luck with the test set; paired, it shows
    assert low < 0 < paired["ci_low"] and paired["ci_high"] - paired["ci_low"] < 0.5 * (high - low)

    same = paired_metric_difference(y_true, y_prob, y_prob, 3, n_bootstrap=50, seed=1)
    assert (same["difference"], same["ci_low"], same["ci_high"], same["share_of_resamples_ahead"]) == (0, 0, 0, 0.5)
