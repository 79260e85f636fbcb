"""Progress with an ETA for long steps, as log lines (readable in a terminal and in a log file).

Keras' own progress bar is off (``training.verbose: 0``): it rewrites one terminal line,
which a log file records as hundreds of fragments. One line per epoch and at most one
line per tenth of a per-image loop say how far a step is and when it should end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

import keras

logger = logging.getLogger(__name__)
T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """``75.2`` → ``1 min 15 s``."""
    minutes, rest = divmod(int(round(max(0.0, seconds))), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


class EpochProgress(keras.callbacks.Callback):
    """Logs ``<name>: epoch 3/20 ... ETA`` after every epoch (early stopping may end sooner)."""

    def __init__(self, name: str, epochs: int) -> None:
        super().__init__()
        self.name, self.epochs = name, int(epochs)
        self._started = 0.0

    def on_train_begin(self, logs=None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        done = epoch + 1
        elapsed = time.monotonic() - self._started
        metrics = ", ".join(f"{key} {float(value):.4f}" for key, value in (logs or {}).items()
                            if key in ("loss", "val_loss", "dice_coefficient", "val_dice_coefficient"))
        eta = elapsed / done * (self.epochs - done)
        logger.info("%s: epoch %d/%d (%s), %s elapsed, ETA %s", self.name, done, self.epochs, metrics,
                    format_duration(elapsed), format_duration(eta) if done < self.epochs else "done")


def log_progress(items: Iterable[T], total: int, what: str, every: float = 0.1) -> Iterator[T]:
    """Yield ``items``, logging ``what: k/total, ETA`` at each ``every`` fraction (and the end)."""
    started, step, next_report = time.monotonic(), max(1, int(total * every)), 0
    count = 0
    for count, item in enumerate(items, start=1):
        yield item
        if count >= next_report + step or count == total:
            next_report = count
            elapsed = time.monotonic() - started
            logger.info("%s: %d/%d, %s elapsed, ETA %s", what, count, total, format_duration(elapsed),
                        format_duration(elapsed / count * (total - count)))
