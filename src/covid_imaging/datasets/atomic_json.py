"""JSON and figure datasets whose saves are atomic (temp file, then rename)."""

from __future__ import annotations

import io
import json
from typing import Any

from kedro.io.core import get_filepath_str
from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from matplotlib.figure import Figure

from covid_imaging.datasets.atomic import atomic_write_bytes


class AtomicJSONDataset(JSONDataset):
    """``json.JSONDataset`` that never leaves a half-written JSON file behind.

    Metrics and settings files are rewritten on every run, and later nodes (and the
    comparison tables) read them back: a truncated file would fail them all.
    """

    def save(self, data: Any) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        atomic_write_bytes(self._fs, save_path, json.dumps(data, **self._save_args).encode("utf-8"))
        self._invalidate_cache()


class AtomicMatplotlibDataset(MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` whose every figure file is written atomically."""

    def _save_to_fs(self, full_key_path: str, plot: Figure) -> None:
        buffer = io.BytesIO()
        plot.savefig(buffer, **self._save_args)
        atomic_write_bytes(self._fs, full_key_path, buffer.getvalue())
