"""Merging user parameters (from Kedro's parameters.yml) over module defaults."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge_params(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, *, where: str
) -> dict[str, Any]:
    """Return a deep copy of ``defaults`` updated with ``overrides``.

    Nested mappings are merged key by key, so a YAML file only has to name the
    values it changes. Keys absent from ``defaults`` raise ``ValueError``: a typo
    in ``parameters.yml`` would otherwise be silently ignored.

    Args:
        defaults: The complete default parameter tree.
        overrides: A (partial) tree of values to use instead, or ``None``.
        where: A name for the parameter tree, used in error messages.
    """
    merged = copy.deepcopy(dict(defaults))
    for key, value in (overrides or {}).items():
        if key not in merged:
            raise ValueError(
                f"Unknown {where} parameter {key!r}; expected one of {sorted(merged)}."
            )
        if isinstance(merged[key], Mapping) and isinstance(value, Mapping):
            merged[key] = merge_params(merged[key], value, where=f"{where}.{key}")
        else:
            merged[key] = copy.deepcopy(value)
    return merged
