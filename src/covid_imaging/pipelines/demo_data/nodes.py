"""Demo data node: a deterministic synthetic data set, so a fresh clone runs end to end."""

from __future__ import annotations

import logging
from typing import Any

from covid_imaging.demo.synthetic import generate_demo_dataset

logger = logging.getLogger(__name__)


def generate_demo_images(params: dict[str, Any]) -> dict[str, bytes]:
    """Return the SYNTHETIC demo files keyed by relative path (empty when disabled).

    Environments that read real data set ``demo_data.enabled: false``: the node then
    writes nothing, and ingestion reads the configured folder or container instead.
    """
    if not params.get("enabled", True):
        logger.info("demo_data.enabled is false: no synthetic images generated")
        return {}
    files = generate_demo_dataset(**params.get("generator", {}))
    logger.info("Generated %d SYNTHETIC demo files (not medical data)", len(files))
    return files
