"""Shortcut-audit verdicts: alarm well above chance, reassurance at chance."""

import math

import pytest

from covid_imaging.classification.shortcut import shortcut_audit_summary

REAL = {"accuracy": 0.93, "balanced_accuracy": 0.91}


def test_lungless_model_well_above_chance_triggers_the_warning():
    summary = shortcut_audit_summary(
        REAL, {"accuracy": 0.80, "balanced_accuracy": 0.78}, n_classes=3, chance_margin=0.1
    )
    assert summary["lungless_above_chance"] is True
    assert summary["chance_level"] == pytest.approx(1 / 3)
    verdict = summary["verdict"]
    assert "can reach 78.0%" in verdict and "without seeing the lungs" in verdict
    assert "predictable from outside the lungs" in verdict and "image source" in verdict
    assert summary["real_balanced_accuracy"] == pytest.approx(0.91)
    assert summary["lungless_accuracy"] == pytest.approx(0.80)


def test_lungless_model_at_chance_does_not_trigger():
    summary = shortcut_audit_summary(
        REAL, {"accuracy": 0.36, "balanced_accuracy": 0.35}, n_classes=3, chance_margin=0.1
    )
    assert summary["lungless_above_chance"] is False
    assert "without seeing the lungs" not in summary["verdict"]
    assert "No shortcut detected" in summary["verdict"]


def test_margin_decides_borderline_cases():
    lungless = {"accuracy": 0.62, "balanced_accuracy": 0.62}
    assert not shortcut_audit_summary(REAL, lungless, 2, chance_margin=0.15)[
        "lungless_above_chance"
    ]
    assert shortcut_audit_summary(REAL, lungless, 2, chance_margin=0.10)["lungless_above_chance"]


def test_undefined_or_missing_metrics():
    summary = shortcut_audit_summary(REAL, {"accuracy": math.nan, "balanced_accuracy": math.nan}, 3)
    assert "inconclusive" in summary["verdict"]
    with pytest.raises(KeyError, match="balanced_accuracy"):
        shortcut_audit_summary(REAL, {"accuracy": 0.5}, 3)
    with pytest.raises(ValueError):
        shortcut_audit_summary(REAL, REAL, 1)


def test_audit_is_not_meaningful_when_the_real_model_is_at_chance():
    """The demo's lung-masked model at chance: no 'No shortcut detected' reassurance."""
    at_chance = {"accuracy": 0.34, "balanced_accuracy": 0.33}
    summary = shortcut_audit_summary(at_chance, {"accuracy": 0.35, "balanced_accuracy": 0.34}, n_classes=3)
    assert summary["meaningful"] is False and summary["real_above_chance"] is False
    assert "not meaningful" in summary["verdict"] and "No shortcut detected" not in summary["verdict"]
    # a lung-less model well above chance still warns, whatever the real model does
    assert "Shortcut warning" in shortcut_audit_summary(at_chance, {"accuracy": 0.8, "balanced_accuracy": 0.8}, 3)["verdict"]
