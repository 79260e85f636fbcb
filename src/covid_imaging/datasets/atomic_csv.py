"""CSV dataset whose save is atomic (temp file, then rename)."""

from __future__ import annotations

import pandas as pd
from kedro.io.core import get_filepath_str
from kedro_datasets.pandas import CSVDataset

from covid_imaging.datasets.atomic import atomic_write_bytes

# Names and labels are text even when they look like numbers (class folders 0/ and 1/,
# files 0001.png): read back as integers, "01" and "1" would become one id, and a
# label 0 could not be joined to a task name.
TEXT_COLUMNS = ("image_id", "image_key", "mask_key", "image_uri", "mask_uri", "label", "manifest_label", "task",
                "source", "group_id", "site", "split", "mask_convention")


class AtomicCSVDataset(CSVDataset):
    """``pandas.CSVDataset`` that never leaves a half-written CSV behind.

    Reports and tables are rewritten on every run; a crash mid-write would otherwise
    truncate the previous good copy.
    """

    def __init__(self, *args, load_args: dict | None = None, **kwargs) -> None:
        # Empty cells (no mask, no group) must stay empty strings, not NaN floats.
        defaults = {"keep_default_na": False, "dtype": dict.fromkeys(TEXT_COLUMNS, str)}
        super().__init__(*args, load_args={**defaults, **(load_args or {})}, **kwargs)

    def save(self, data: pd.DataFrame) -> None:
        save_path = get_filepath_str(self._get_save_path(), self._protocol)
        save_args = {"index": False, **self._save_args}
        atomic_write_bytes(self._fs, save_path, data.to_csv(**save_args).encode("utf-8"))
        self._invalidate_cache()
