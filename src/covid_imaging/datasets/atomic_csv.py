"""CSV dataset whose save is atomic (temp file, then rename)."""

from __future__ import annotations

import pandas as pd
from kedro.io.core import get_filepath_str
from kedro_datasets.pandas import CSVDataset

from covid_imaging.datasets.atomic import atomic_write_bytes


class AtomicCSVDataset(CSVDataset):
    """``pandas.CSVDataset`` that never leaves a half-written CSV behind.

    Reports and tables are rewritten on every run; a crash mid-write would otherwise
    truncate the previous good copy.
    """

    def __init__(self, *args, load_args: dict | None = None, **kwargs) -> None:
        # Empty cells (no mask, no group) must stay empty strings, not NaN floats.
        super().__init__(*args, load_args={"keep_default_na": False, **(load_args or {})}, **kwargs)

    def save(self, data: pd.DataFrame) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        save_args = {"index": False, **self._save_args}
        atomic_write_bytes(self._fs, save_path, data.to_csv(**save_args).encode("utf-8"))
        self._invalidate_cache()
