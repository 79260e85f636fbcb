"""The one way parameters are validated: merged over complete defaults, unknown keys fail.

No TensorFlow import here: the OpenCV preprocessing uses it too.

Every parameter tree (training, augmentation, post-processing, preprocessing, ingestion)
has a complete default tree in code; a YAML block names only what it changes. A key the
defaults do not have is a typo and raises with its dotted name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge_params(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, *, where: str
) -> dict[str, Any]:
    """Return a deep copy of ``defaults`` updated with ``overrides``.

    Nested mappings are merged key by key, so a YAML file only has to name the
    values it changes. Keys absent from ``defaults`` raise ``ValueError`` naming the
    key (``where.key``): a typo in ``parameters.yml`` would otherwise be silently ignored.

    Args:
        defaults: The complete default parameter tree.
        overrides: A (partial) tree of values to use instead, or ``None``.
        where: A name for the parameter tree, used in error messages.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ValueError(f"{where} parameters must be a mapping, got {type(overrides).__name__}")
    merged = copy.deepcopy(dict(defaults))
    for key, value in (overrides or {}).items():
        if key not in merged:
            raise ValueError(
                f"Unknown {where} parameter {key!r} ({where}.{key}); expected one of {sorted(merged)}."
            )
        if isinstance(merged[key], Mapping) and isinstance(value, Mapping):
            merged[key] = merge_params(merged[key], value, where=f"{where}.{key}")
        else:
            merged[key] = copy.deepcopy(value)
    return merged
