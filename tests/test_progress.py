"""Per-image stages log how far they are, with an ETA, as each tenth of the outputs is computed."""

from __future__ import annotations

import re

from covid_imaging.compute import ComputeConfig, LazyResults
from covid_imaging.progress import log_progress


def _double(value: int) -> int:
    return 2 * value


def _progress(caplog, what: str) -> list[tuple[int, int]]:
    pattern = re.compile(rf"^{re.escape(what)}: (\d+)/(\d+), .* elapsed, ETA ")
    found = [pattern.match(record.getMessage()) for record in caplog.records]
    return [(int(m[1]), int(m[2])) for m in found if m]


def test_log_progress_reports_each_tenth_and_the_last_item_even_if_the_consumer_stops(caplog):
    with caplog.at_level("INFO", logger="covid_imaging.progress"):
        items = log_progress(range(25), 25, "checking files")
        taken = [next(items) for _ in range(25)]  # the consumer never asks past the last item
    assert taken == list(range(25))
    assert _progress(caplog, "checking files") == [(k, 25) for k in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25)]


def test_lazy_results_named_by_the_stage_log_its_progress_and_keep_their_values(caplog):
    results = LazyResults(_double, {f"images/{k:02d}": k for k in range(10)}, ComputeConfig(n_workers=2),
                          what="preprocessing")
    with caplog.at_level("INFO", logger="covid_imaging.progress"):
        values = {key: results[key]() for key in sorted(results)}  # as PartitionedDataset saves them
    assert values == {f"images/{k:02d}": 2 * k for k in range(10)}
    assert _progress(caplog, "preprocessing") == [(k, 10) for k in range(1, 11)]
