"""The self-contained HTML report of an inference run (opens offline: no external resource).

Thumbnails are ``data:`` URIs, the style and the few lines of script are inline. The
table sorts by any column on a click on its header, or on load from the address'
fragment (``report.html#sort=lung_area_fraction&desc``), so a sorted view can be shared.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:middle}
th[data-key]{cursor:pointer;background:#f2f2f2}
.flag{background:#fde2e1;color:#8a1c13;border-radius:3px;padding:0 4px;margin-right:2px}
.ok{color:#276738}
img.thumb{display:block;max-width:160px;max-height:160px}
section{margin-bottom:1.5em}
"""

_SCRIPT = """
function sortTable(key, descending) {
  var table = document.getElementById('predictions');
  var header = table.querySelector('th[data-key="' + key + '"]');
  if (!header) { return; }
  var column = Array.prototype.indexOf.call(header.parentNode.children, header);
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[column].getAttribute('data-value'), y = b.cells[column].getAttribute('data-value');
    var nx = parseFloat(x), ny = parseFloat(y), order;
    if (!isNaN(nx) && !isNaN(ny)) { order = nx - ny; } else { order = x < y ? -1 : (x > y ? 1 : 0); }
    return descending ? -order : order;
  });
  rows.forEach(function (row) { body.appendChild(row); });
  table.setAttribute('data-sorted-by', key + (descending ? ' desc' : ''));
}
document.querySelectorAll('#predictions th[data-key]').forEach(function (header) {
  header.addEventListener('click', function () {
    var key = header.getAttribute('data-key');
    var current = document.getElementById('predictions').getAttribute('data-sorted-by');
    sortTable(key, current === key);
  });
});
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var shown = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-thumbnails-shown', shown + '/' + images.length);
});
(function () {
  var fragment = window.location.hash.replace(/^#/, '').split('&');
  var sort = fragment.filter(function (p) { return p.indexOf('sort=') === 0; })[0];
  if (sort) { sortTable(decodeURIComponent(sort.slice(5)), fragment.indexOf('desc') >= 0); }
})();
"""


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _cell(value: Any, shown: str | None = None) -> str:
    sort_value = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    return f'<td data-value="{html.escape(sort_value)}">{shown if shown is not None else html.escape(_text(value))}</td>'


def _flags_html(flags: Any) -> str:
    names = [f for f in str(flags or "").split(";") if f and f != "nan"]
    if not names:
        return '<span class="ok">none</span>'
    return "".join(f'<span class="flag">{html.escape(name)}</span>' for name in names)


def _columns(present: Collection[str], classifier_names: Sequence[str]) -> list[tuple[str, str]]:
    """``(column, header)`` of the image table, for the prediction columns present."""
    columns: list[tuple[str, str]] = [("image_id", "image"), ("source", "source"), ("modality", "modality")]
    if "lung_area_fraction" in present:
        columns += [("lung_area_fraction", "lung area (share)"), ("right_lung_area_px", "right lung (px)"),
                    ("left_lung_area_px", "left lung (px)"), ("qc_flags", "QC flags")]
    if "dice_native" in present:
        columns += [("dice_native", "Dice vs given mask")]
    for name in classifier_names:
        if f"{name}.prediction" in present:
            columns += [(f"{name}.prediction", f"{name}: class"), (f"{name}.probability", f"{name}: probability")]
    return columns


def _image_rows(predictions: pd.DataFrame, thumbnails: Mapping[str, str], columns: list[tuple[str, str]]) -> str:
    body = []
    for row in predictions.to_dict("records"):
        thumb = thumbnails.get(str(row["image_id"]), "")
        cells = [f'<td><img class="thumb" alt="{html.escape(str(row["image_id"]))}" src="{thumb}"></td>' if thumb else "<td></td>"]
        for key, _ in columns:
            value = row.get(key)
            cells.append(_cell(value, _flags_html(value) if key == "qc_flags" and "qc_flags" in row else None))
        body.append(f'<tr data-image-id="{html.escape(str(row["image_id"]))}">{"".join(cells)}</tr>')
    return "".join(body)


def report_pieces(
    chunks: Iterable[tuple[pd.DataFrame, Mapping[str, str]]],
    present_columns: Collection[str],
    n_images: int,
    model_versions: Mapping[str, str],
    class_counts: Mapping[str, Mapping[str, int]],
    qc_counts: Mapping[str, int],
    rejected: pd.DataFrame,
    classifier_names: Sequence[str],
    source: str,
    title: str = "Inference report",
) -> Iterator[str]:
    """The report in pieces, one per chunk of ``(predictions rows, their thumbnails)``, so a
    run of any size is written without holding its whole table and thumbnails in memory.
    ``present_columns``: every prediction column of the run (chunks may lack some)."""
    columns = _columns(present_columns, classifier_names)
    header = "<th>thumbnail</th>" + "".join(
        f'<th data-key="{html.escape(key)}">{html.escape(label)}</th>' for key, label in columns
    )
    model_rows = "".join(
        f"<tr><td>{html.escape(ns)}</td><td>{html.escape(str(version))}</td></tr>" for ns, version in model_versions.items()
    )
    count_sections = "".join(
        f'<h3>{html.escape(ns)}</h3><table class="counts" data-model="{html.escape(ns)}"><tr><th>predicted class</th><th>images</th></tr>'
        + "".join(f'<tr><td>{html.escape(cls)}</td><td data-count="{n}">{n}</td></tr>' for cls, n in counts.items())
        + "</table>"
        for ns, counts in class_counts.items()
    )
    qc_rows = "".join(f'<tr><td>{html.escape(flag)}</td><td data-count="{n}">{n}</td></tr>' for flag, n in qc_counts.items())
    # Ingestion's warning rows (e.g. an extreme aspect ratio) are images that were used.
    is_warning = rejected["severity"].eq("warning") if "severity" in rejected.columns else pd.Series(False, rejected.index)
    rejected_rows, warning_rows = (
        "".join(f"<tr><td>{html.escape(str(r['file']))}</td><td>{html.escape(str(r['reason']))}</td></tr>"
                for r in rows.to_dict("records"))
        for rows in (rejected[~is_warning], rejected[is_warning])
    )
    summary = {"images": int(n_images), "rejected": int((~is_warning).sum()), "warnings": int(is_warning.sum())}
    yield f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Source: <code>{html.escape(source)}</code>. <span id="summary" data-summary='{html.escape(json.dumps(summary))}'>
{summary["images"]} images predicted, {summary["rejected"]} files not used.</span></p>
<section><h2>Models</h2><table id="models"><tr><th>model</th><th>version</th></tr>{model_rows}</table></section>
<section><h2>Predicted classes</h2>{count_sections or "<p>No classifier was applied.</p>"}</section>
<section><h2>QC flags</h2><table id="qc"><tr><th>flag</th><th>images</th></tr>{qc_rows}</table></section>
<section><h2>Images</h2><p>Click a column header to sort.</p>
<table id="predictions"><thead><tr>{header}</tr></thead><tbody>"""
    for predictions, thumbnails in chunks:
        yield _image_rows(predictions, thumbnails, columns)
    yield f"""</tbody></table></section>
<section><h2>Files not used</h2><table id="rejected"><tr><th>file</th><th>reason</th></tr>{rejected_rows}</table></section>
<section><h2>Files used, with a warning</h2><table id="warnings"><tr><th>file</th><th>warning</th></tr>{warning_rows}</table></section>
<script>{_SCRIPT}</script>
</body></html>
"""

