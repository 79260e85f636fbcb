"""Classification metrics with bootstrap confidence intervals, tables and figures.

Per class (one-vs-rest) and macro: accuracy, balanced accuracy, precision, recall
(sensitivity), specificity, F1 and ROC AUC. In the ``macro`` row ``accuracy`` is the
multi-class accuracy (fraction correct) and ``balanced_accuracy`` is the mean
per-class recall (scikit-learn's definition); the other macro metrics are the mean
of the per-class values. Undefined values (e.g. recall or ROC AUC of a class absent
from a scope) are NaN, carry a note, and are left out of macro means.

Metrics are computed from batched confusion matrices and a rank-based ROC AUC
(Mann-Whitney U, equal to ``sklearn.metrics.roc_auc_score`` with ties) because the
bootstrap evaluates them thousands of times; the tests pin them to scikit-learn.

The bootstrap resamples images, or, given ``clusters`` (a patient or scan id per image),
whole clusters: neighbouring CT slices of one scan are not independent observations, and
resampling them one by one gives intervals that are too narrow (a cluster bootstrap).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import rankdata

METRIC_NAMES = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "roc_auc",
)
MACRO = "macro"
OVERALL_SCOPE = "overall"
TABLE_COLUMNS = (
    "scope",
    "class",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "n_clusters",
    "support",
    "note",
)


# ------------------------------------------------------------------- validation


def _validate(y_true: np.ndarray, y_prob: np.ndarray, n_classes: int) -> None:
    if y_prob.ndim != 2 or y_prob.shape[1] != n_classes:
        raise ValueError(f"y_prob must have shape (N, {n_classes}), got {y_prob.shape}")
    if y_true.ndim != 1 or y_true.shape[0] != y_prob.shape[0]:
        raise ValueError(f"y_true must have shape ({y_prob.shape[0]},), got {y_true.shape}")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= n_classes):
        raise ValueError(f"y_true labels must lie in [0, {n_classes - 1}]")


def predicted_labels(y_prob: np.ndarray) -> np.ndarray:
    """Arg-max class of every row of probabilities."""
    return np.asarray(y_prob).argmax(axis=1)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows = true class, columns = predicted class."""
    from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

    return sklearn_confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


# --------------------------------------------------------- vectorised metrics


def _batched_confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(B, K, K)`` confusion matrices for ``(B, N)`` label arrays."""
    n_batches = y_true.shape[0]
    flat = (np.arange(n_batches)[:, None] * n_classes + y_true) * n_classes + y_pred
    counts = np.bincount(flat.ravel(), minlength=n_batches * n_classes * n_classes)
    return counts.reshape(n_batches, n_classes, n_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    defined = denominator > 0
    return np.where(defined, numerator / np.where(defined, denominator, 1), np.nan)


def _per_class_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest metrics ``(B, K)`` from ``(B, K, K)`` confusion matrices."""
    true_pos = np.diagonal(confusion, axis1=1, axis2=2).astype(float)
    actual = confusion.sum(axis=2)
    predicted = confusion.sum(axis=1)
    total = confusion.sum(axis=(1, 2))[:, None].astype(float)
    false_neg = actual - true_pos
    false_pos = predicted - true_pos
    true_neg = total - true_pos - false_neg - false_pos
    recall = _safe_divide(true_pos, actual)
    specificity = _safe_divide(true_neg, true_neg + false_pos)
    return {
        "accuracy": _safe_divide(true_pos + true_neg, total),
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": _safe_divide(true_pos, predicted),
        "recall": recall,
        "specificity": specificity,
        "f1": _safe_divide(2 * true_pos, 2 * true_pos + false_pos + false_neg),
    }


def _ovr_roc_auc(y_true: np.ndarray, y_prob: np.ndarray) -> np.ndarray:
    """``(B, K)`` one-vs-rest ROC AUC via Mann-Whitney U for ``(B, N)`` / ``(B, N, K)``."""
    n_classes = y_prob.shape[-1]
    n_samples = y_true.shape[1]
    aucs = np.empty((y_true.shape[0], n_classes))
    for k in range(n_classes):
        positive = y_true == k
        n_pos = positive.sum(axis=1).astype(float)
        n_neg = n_samples - n_pos
        ranks = rankdata(y_prob[..., k], axis=1)  # average ranks handle ties like sklearn
        u_stat = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
        aucs[:, k] = _safe_divide(u_stat, n_pos * n_neg)
    return aucs


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are expected: NaN
        return np.nanmean(values, axis=axis)


def _metric_samples(
    y_true: np.ndarray, y_prob: np.ndarray, n_classes: int
) -> dict[str, np.ndarray]:
    """Per-class ``(B, K)`` and macro ``(B,)`` metrics for batches ``(B, N)``/``(B, N, K)``.

    Keys: metric name for per-class arrays, ``"macro:" + metric`` for macro arrays.
    """
    y_pred = y_prob.argmax(axis=-1)
    confusion = _batched_confusion(y_true, y_pred, n_classes)
    per_class = _per_class_from_confusion(confusion)
    per_class["roc_auc"] = _ovr_roc_auc(y_true, y_prob)
    samples: dict[str, np.ndarray] = dict(per_class)
    for metric, values in per_class.items():
        samples[f"{MACRO}:{metric}"] = _nanmean(values, axis=1)
    n_total = confusion.sum(axis=(1, 2))
    samples[f"{MACRO}:accuracy"] = _safe_divide(
        np.trace(confusion, axis1=1, axis2=2).astype(float), n_total
    )
    samples[f"{MACRO}:balanced_accuracy"] = _nanmean(per_class["recall"], axis=1)
    return samples


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
) -> dict[str, dict[str, float]]:
    """Point estimates ``{class name or "macro": {metric: value}}``."""
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    n_classes = len(class_names)
    _validate(y_true, y_prob, n_classes)
    samples = _metric_samples(y_true[None], y_prob[None], n_classes)
    result = {
        name: {metric: float(samples[metric][0, k]) for metric in METRIC_NAMES}
        for k, name in enumerate(class_names)
    }
    result[MACRO] = {metric: float(samples[f"{MACRO}:{metric}"][0]) for metric in METRIC_NAMES}
    return result


def bootstrap_metric_samples(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    n_classes: int,
    n_bootstrap: int = 1000,
    seed: int = 0,
    chunk_size: int = 100,
    clusters: Sequence[str] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Metric values on ``n_bootstrap`` resamples (with replacement, seeded).

    Same keys as the internal metric samples: per-class ``(n_bootstrap, K)`` arrays
    under the metric name, macro ``(n_bootstrap,)`` arrays under ``"macro:<metric>"``.
    Resamples are drawn in chunks to bound memory on large test sets. With ``clusters``
    (one id per sample), each resample draws as many clusters as there are, with
    replacement, and takes every sample of each drawn cluster.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    _validate(y_true, y_prob, n_classes)
    rng = np.random.default_rng(seed)
    if clusters is not None:
        return _cluster_bootstrap_samples(y_true, y_prob, n_classes, n_bootstrap, rng, clusters)
    n_samples = y_true.shape[0]
    chunks: list[dict[str, np.ndarray]] = []
    for start in range(0, n_bootstrap, chunk_size):
        size = min(chunk_size, n_bootstrap - start)
        indices = rng.integers(0, n_samples, size=(size, n_samples))
        chunks.append(_metric_samples(y_true[indices], y_prob[indices], n_classes))
    return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}


def paired_metric_difference(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    y_prob_baseline: np.ndarray,
    n_classes: int,
    metric: str = f"{MACRO}:balanced_accuracy",
    n_bootstrap: int = 1000,
    seed: int = 0,
    clusters: Sequence[str] | np.ndarray | None = None,
) -> dict[str, float]:
    """``metric`` of ``y_prob`` minus that of ``y_prob_baseline`` on the same samples, with
    a paired bootstrap 95 % interval: both are scored on the same resamples (the resample
    indices depend only on ``seed``, the sample count and ``clusters``, not on the
    probabilities), so what varies between resamples is the difference itself, not each
    model's luck with the test set. Also the share of resamples in which the model is
    ahead (ties count half)."""
    y_true = np.asarray(y_true, dtype=int)
    model, baseline = (bootstrap_metric_samples(y_true, probabilities, n_classes, n_bootstrap, seed, clusters=clusters)
                       [metric] for probabilities in (y_prob, y_prob_baseline))
    point = (_metric_samples(y_true[None], np.asarray(y_prob, float)[None], n_classes)[metric][0]
             - _metric_samples(y_true[None], np.asarray(y_prob_baseline, float)[None], n_classes)[metric][0])
    difference = model - baseline
    low, high = percentile_interval(difference)
    finite = difference[np.isfinite(difference)]
    ahead = float(np.mean((finite > 0) + 0.5 * (finite == 0))) if finite.size else float("nan")
    return {"difference": float(point), "ci_low": low, "ci_high": high, "share_of_resamples_ahead": ahead}


def _cluster_ids(clusters: Sequence[str] | np.ndarray, y_true: np.ndarray) -> np.ndarray:
    cluster_ids = np.asarray(clusters).astype(str)
    if cluster_ids.shape != y_true.shape:
        raise ValueError(f"clusters must have shape {y_true.shape}, got {cluster_ids.shape}")
    return cluster_ids


def cluster_bootstrap_indices(
    clusters: Sequence[str] | np.ndarray, n_bootstrap: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Sample indices of ``n_bootstrap`` cluster-bootstrap resamples: each draws as many
    clusters as there are, with replacement, and takes every sample of each drawn one."""
    _, cluster_index = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    members = [np.flatnonzero(cluster_index == c) for c in range(cluster_index.max() + 1)]
    for drawn in rng.integers(0, len(members), size=(n_bootstrap, len(members))):
        yield np.concatenate([members[c] for c in drawn])


def _cluster_bootstrap_samples(
    y_true: np.ndarray, y_prob: np.ndarray, n_classes: int, n_bootstrap: int,
    rng: np.random.Generator, clusters: Sequence[str] | np.ndarray,
) -> dict[str, np.ndarray]:
    # Resamples differ in size (clusters differ in size), so each is scored on its own.
    resamples = [_metric_samples(y_true[indices][None], y_prob[indices][None], n_classes)
                 for indices in cluster_bootstrap_indices(_cluster_ids(clusters, y_true), n_bootstrap, rng)]
    return {key: np.concatenate([resample[key] for resample in resamples]) for key in resamples[0]}


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval, ignoring NaN resamples (NaN if all are NaN)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return (np.nan, np.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------- tables


def _class_notes(confusion: np.ndarray, k: int) -> dict[str, str]:
    """Why a class's metrics are undefined in this scope (metric -> note)."""
    support = confusion[k].sum()
    negatives = confusion.sum() - support
    predicted = confusion[:, k].sum()
    notes: dict[str, str] = {}
    if support == 0:
        note = "class absent from y_true in this scope: undefined"
        for metric in ("recall", "balanced_accuracy", "roc_auc"):
            notes[metric] = note
        if predicted == 0:
            notes["f1"] = note
    if negatives == 0:
        note = "no samples of other classes in this scope: undefined"
        for metric in ("specificity", "balanced_accuracy", "roc_auc"):
            notes[metric] = note
    if predicted == 0 and "precision" not in notes:
        notes["precision"] = "class never predicted in this scope: undefined"
    return notes


def _scope_rows(
    scope: str,
    y_true: np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    n_bootstrap: int,
    confidence: float,
    seed: int,
    clusters: np.ndarray | None,
) -> list[dict[str, object]]:
    n_classes = len(class_names)
    point = _metric_samples(y_true[None], y_prob[None], n_classes)
    boot = (
        bootstrap_metric_samples(y_true, y_prob, n_classes, n_bootstrap, seed, clusters=clusters)
        if n_bootstrap > 0
        else None
    )
    confusion = confusion_matrix(y_true, predicted_labels(y_prob), n_classes)
    n_total = int(y_true.size)
    n_clusters = int(np.unique(clusters).size) if clusters is not None else n_total
    rows: list[dict[str, object]] = []
    for k, name in enumerate(class_names):
        notes = _class_notes(confusion, k)
        for metric in METRIC_NAMES:
            low, high = (
                percentile_interval(boot[metric][:, k], confidence) if boot else (np.nan, np.nan)
            )
            rows.append(
                {
                    "scope": scope,
                    "class": name,
                    "metric": metric,
                    "value": float(point[metric][0, k]),
                    "ci_low": low,
                    "ci_high": high,
                    "n": n_total,
                    "n_clusters": n_clusters,
                    "support": int(confusion[k].sum()),
                    "note": notes.get(metric, ""),
                }
            )
    for metric in METRIC_NAMES:
        key = f"{MACRO}:{metric}"
        low, high = percentile_interval(boot[key], confidence) if boot else (np.nan, np.nan)
        undefined = np.isnan(point[metric][0]).any() and metric != "accuracy"
        rows.append(
            {
                "scope": scope,
                "class": MACRO,
                "metric": metric,
                "value": float(point[key][0]),
                "ci_low": low,
                "ci_high": high,
                "n": n_total,
                "n_clusters": n_clusters,
                "support": n_total,
                "note": "mean over classes where defined" if undefined else "",
            }
        )
    return rows


def classification_report_table(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    groups: Sequence[str] | np.ndarray | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence[str] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Tidy metrics table with percentile bootstrap CIs, overall and per group.

    One row per (scope, class, metric); ``scope`` is ``"overall"`` or a group label
    (e.g. the image source), ``class`` a class name or ``"macro"``. ``n`` is the
    number of samples in the scope, ``support`` the number of true samples of the
    class (``n`` for macro), ``note`` explains NaN values. With ``clusters`` (a patient or
    scan id per sample) the CIs come from a cluster bootstrap and ``n_clusters`` counts
    the clusters of the scope; without, every sample is its own cluster.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    _validate(y_true, y_prob, len(class_names))
    if clusters is not None:
        clusters = _cluster_ids(clusters, y_true)
    scopes: list[tuple[str, np.ndarray]] = [(OVERALL_SCOPE, np.ones(y_true.size, dtype=bool))]
    if groups is not None:
        group_array = np.asarray(groups).astype(str)
        if group_array.shape != y_true.shape:
            raise ValueError(f"groups must have shape {y_true.shape}, got {group_array.shape}")
        scopes += [(group, group_array == group) for group in sorted(set(group_array))]
    rows = [
        row
        for scope, selected in scopes
        for row in _scope_rows(
            scope, y_true[selected], y_prob[selected], class_names, n_bootstrap, confidence, seed,
            None if clusters is None else clusters[selected],
        )
    ]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def macro_metrics_from_table(table: pd.DataFrame, scope: str = OVERALL_SCOPE) -> dict[str, float]:
    """``{metric: value}`` of the macro rows of one scope (input to the shortcut audit)."""
    rows = table[(table["scope"] == scope) & (table["class"] == MACRO)]
    if rows.empty:
        raise ValueError(f"No macro rows for scope {scope!r}")
    return {str(m): float(v) for m, v in zip(rows["metric"], rows["value"], strict=True)}


# ---------------------------------------------------------------------- figures


def plot_confusion_matrix(
    y_true: Sequence[int] | np.ndarray,
    y_pred_or_prob: np.ndarray,
    class_names: Sequence[str],
    normalize: Literal["true", "pred", "all"] | None = None,
    title: str | None = None,
) -> Figure:
    """Confusion-matrix heatmap (rows true, columns predicted); accepts labels or probabilities."""
    from sklearn.metrics import ConfusionMatrixDisplay

    predictions = np.asarray(y_pred_or_prob)
    if predictions.ndim == 2:
        predictions = predicted_labels(predictions)
    counts = confusion_matrix(np.asarray(y_true, dtype=int), predictions, len(class_names))
    matrix = counts.astype(float)
    if normalize == "true":
        matrix = _safe_divide(matrix, matrix.sum(axis=1, keepdims=True))
    elif normalize == "pred":
        matrix = _safe_divide(matrix, matrix.sum(axis=0, keepdims=True))
    elif normalize == "all":
        matrix = _safe_divide(matrix, np.full_like(matrix, matrix.sum()))
    figure = Figure(figsize=(1.2 * len(class_names) + 3, 1.2 * len(class_names) + 2.5))
    axes = figure.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=list(class_names)).plot(
        ax=axes, cmap="Blues", values_format=".2f" if normalize else ".0f", colorbar=True
    )
    axes.set_title(
        title or ("Confusion matrix" + (f" (normalised by {normalize})" if normalize else ""))
    )
    figure.tight_layout()
    return figure


def plot_roc_curves(
    y_true: Sequence[int] | np.ndarray,
    y_prob: np.ndarray,
    class_names: Sequence[str],
    title: str | None = None,
) -> Figure:
    """One-vs-rest ROC curve per class (classes absent from ``y_true`` are skipped)."""
    from sklearn.metrics import RocCurveDisplay

    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    _validate(y_true, y_prob, len(class_names))
    figure = Figure(figsize=(6, 5.5))
    axes = figure.subplots()
    for k, name in enumerate(class_names):
        positive = y_true == k
        if positive.all() or not positive.any():
            continue  # ROC undefined without both positives and negatives
        RocCurveDisplay.from_predictions(positive, y_prob[:, k], name=name, ax=axes)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    axes.set_title(title or "One-vs-rest ROC curves")
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure
