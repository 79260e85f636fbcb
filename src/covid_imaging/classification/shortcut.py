"""Shortcut audit: can a model trained with the lungs blacked out still classify?

If it clearly beats chance, the labels leak through what lies outside the lungs
(image source, text markers, patient position, ...), and the real model's scores
cannot be taken as evidence that it reads lung pathology.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _metric(metrics: Mapping[str, float], key: str, which: str) -> float:
    if key not in metrics:
        raise KeyError(f"{which} metrics lack {key!r}; got keys {sorted(metrics)}")
    return float(metrics[key])


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def shortcut_audit_summary(
    real_metrics: Mapping[str, float],
    lungless_metrics: Mapping[str, float],
    n_classes: int,
    chance_margin: float = 0.10,
) -> dict[str, Any]:
    """Compare a real model with one trained on lung-less images.

    Both metric dicts need ``accuracy`` and ``balanced_accuracy`` (e.g. the macro row
    of :func:`covid_imaging.classification.evaluation.classification_report_table`).
    The verdict uses balanced accuracy, whose chance level is ``1 / n_classes`` whatever
    the class balance; "well above chance" means more than ``chance_margin`` above it.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    chance = 1.0 / n_classes
    real_accuracy = _metric(real_metrics, "accuracy", "real")
    real_balanced = _metric(real_metrics, "balanced_accuracy", "real")
    lungless_accuracy = _metric(lungless_metrics, "accuracy", "lung-less")
    lungless_balanced = _metric(lungless_metrics, "balanced_accuracy", "lung-less")
    above_chance = lungless_balanced > chance + chance_margin
    # "No shortcut" only means something when the real model has learned: if it is at
    # chance itself, a lung-less model at chance shows nothing about shortcuts.
    real_learned = real_balanced > chance + chance_margin

    if above_chance:
        verdict = (
            f"Shortcut warning: the classifier can reach {_percent(lungless_balanced)} "
            f"balanced accuracy without seeing the lungs (chance level {_percent(chance)}): "
            "the labels are predictable from outside the lungs, e.g. from the image source, "
            "text markers or patient positioning. The real model's "
            f"{_percent(real_balanced)} balanced accuracy may rest on these shortcuts "
            "rather than on lung findings."
        )
    elif math.isnan(lungless_balanced):
        verdict = (
            "Shortcut audit inconclusive: the lung-less model's balanced accuracy is undefined."
        )
    elif not real_learned:
        verdict = (
            f"Shortcut audit not meaningful: the real model itself is at chance "
            f"({_percent(real_balanced)} balanced accuracy, chance level {_percent(chance)}, "
            f"margin {_percent(chance_margin)}), so a lung-less model at "
            f"{_percent(lungless_balanced)} says nothing about shortcuts. Train the real model "
            "until it beats chance (more data or epochs), then audit again."
        )
    else:
        verdict = (
            f"No shortcut detected: without the lungs the classifier reaches "
            f"{_percent(lungless_balanced)} balanced accuracy, not more than "
            f"{_percent(chance_margin)} above chance ({_percent(chance)}), so the labels are "
            "not predictable from outside the lungs at this margin."
        )
    return {
        "real_accuracy": real_accuracy,
        "real_balanced_accuracy": real_balanced,
        "lungless_accuracy": lungless_accuracy,
        "lungless_balanced_accuracy": lungless_balanced,
        "chance_level": chance,
        "chance_margin": float(chance_margin),
        "lungless_above_chance": bool(above_chance),
        "real_above_chance": bool(real_learned),
        "meaningful": bool(above_chance or real_learned),
        "verdict": verdict,
    }
