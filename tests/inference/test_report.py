"""The HTML report, rendered in a real headless browser (Chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from covid_imaging.inference.engine import thumbnail_data_uri
from covid_imaging.inference.report import report_pieces

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Dom(HTMLParser):
    """The rows' image ids in order, and the attributes of a few elements."""

    def __init__(self) -> None:
        super().__init__()
        self.row_ids: list[str] = []
        self.attributes: dict[str, dict[str, str]] = {}
        self.counts: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-image-id" in attrs:
            self.row_ids.append(attrs["data-image-id"])
        if tag in ("body",) or attrs.get("id") == "predictions":
            self.attributes[attrs.get("id", tag)] = attrs
        if "data-count" in attrs:
            self.counts.append(attrs["data-count"])


def _report() -> str:
    predictions = pd.DataFrame({
        "image_id": ["a", "b", "c"], "source": ["s"] * 3, "modality": ["cxr"] * 3,
        "lung_area_fraction": [0.31, 0.05, 0.42], "right_lung_area_px": [10, 2, 12], "left_lung_area_px": [9, 0, 11],
        "qc_flags": ["", "one_lung;implausible_area", ""], "qc_one_lung": [False, True, False],
        "qc_implausible_area": [False, True, False],
        "simple_cnn_scratch.prediction": ["covid", "normal", "covid"],
        "simple_cnn_scratch.probability": [0.9, 0.6, 0.8],
    })
    gray = np.tile(np.arange(64, dtype=np.uint8)[None] * 4, (64, 1))
    thumbnails = {i: thumbnail_data_uri(np.dstack([gray] * 3), 32) for i in predictions["image_id"]}
    rejected = pd.DataFrame({"file": ["new/broken.png", "new/wide.png"], "reason": ["truncated PNG", "aspect ratio 6.0"],
                             "severity": ["error", "warning"]})
    chunks = [(predictions.iloc[:2], thumbnails), (predictions.iloc[2:], thumbnails)]  # written batch by batch
    return "".join(report_pieces(
        chunks, list(predictions.columns), len(predictions), {"segmentation.unet": "2026-02-01T00.00.00.000Z"},
        {"classification.simple_cnn_scratch": {"normal": 1, "bacterial": 0, "covid": 2}},
        {"no_lung": 0, "one_lung": 1, "implausible_area": 1, "many_components": 0, "low_confidence": 0},
        rejected, ["simple_cnn_scratch"], "new/",
    ))


def test_the_report_needs_nothing_from_the_network():
    html = _report()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "2026-02-01T00.00.00.000Z" in html and "truncated PNG" in html
    summary = json.loads(re.search(r"data-summary='([^']*)'", html).group(1).replace("&quot;", '"'))
    assert summary == {"images": 3, "rejected": 1, "warnings": 1}  # a warned image was used, not rejected
    assert "1 files not used" in html
    assert html.index("aspect ratio 6.0") > html.index('id="warnings"')


def test_the_report_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        reason = "Chromium is not installed (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):  # as the Azure tests: skipping is for local machines only
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    path = tmp_path / "report.html"
    path.write_text(_report(), encoding="utf-8")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom",
         f"{path.as_uri()}#sort=lung_area_fraction&desc"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    dom = _Dom()
    dom.feed(result.stdout)
    assert dom.attributes["body"]["data-thumbnails-shown"] == "3/3"  # every data: URI decoded
    assert dom.attributes["predictions"]["data-sorted-by"] == "lung_area_fraction desc"
    assert dom.row_ids == ["c", "a", "b"]  # sorted by the script, from the address
    assert dom.counts == ["1", "0", "2", "0", "1", "1", "0", "0"]  # classes, then QC flags
