"""Progress with an ETA for long steps, as log lines (readable in a terminal and in a log file).

Keras' own progress bar is off (``training.verbose: 0``): it rewrites one terminal line,
which a log file records as hundreds of fragments. One line per epoch (the training
core's ``EpochProgress``) and at most one line per tenth of a per-image loop say how far
a step is and when it should end. No TensorFlow here: the per-image stages import this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``75.2`` → ``1 min 15 s``."""
    minutes, rest = divmod(int(round(max(0.0, seconds))), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def log_progress(items: Iterable[T], total: int, what: str, every: float = 0.1) -> Iterator[T]:
    """Yield ``items``, logging ``what: k/total, ETA`` at each ``every`` fraction (and the last).

    The line is logged as an item arrives, before it is handed on, so the last one is
    logged even when the consumer stops asking once it has what it needs.
    """
    started, step, next_report = time.monotonic(), max(1, int(total * every)), 0
    for count, item in enumerate(items, start=1):
        if count >= next_report + step or count == total:
            next_report = count
            elapsed = time.monotonic() - started
            logger.info("%s: %d/%d, %s elapsed, ETA %s", what, count, total, format_duration(elapsed),
                        format_duration(elapsed / count * (total - count)))
        yield item
