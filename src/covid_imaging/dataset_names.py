"""The data set name that namespaces every output (``data/<stage>/<dataset_name>/...``).

One rule, registered as the OmegaConf resolver ``dataset_name`` (see ``settings.py``) and
used by the catalog and the parameters, so a run on one data set never overwrites the
outputs, reports or "last trained model" of another:

1. ``--params=dataset_name=<name>`` when given;
2. otherwise, when ``--params=raw_images_path=<dir>`` points at another folder, the last
   part of that path (``/data/my_xrays/`` → ``my_xrays``);
3. otherwise the environment's ``dataset_name`` (``conf/<env>/globals.yml``).
"""

from __future__ import annotations

import re

RESOLVER = "dataset_name"
DEMO_RESOLVER = "demo_data_enabled"
# A folder name on every file system and in blob paths; no separators, no dot-only names.
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def name_from_path(path: str) -> str:
    """A folder-safe name from the last part of a local path or URL."""
    last = str(path).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    last = last.split(":")[-1]  # 'abfs://container' → 'container'
    name = _UNSAFE.sub("_", last).strip("._-")
    if not name:
        raise ValueError(
            f"Cannot derive a data set name from raw_images_path {path!r}; "
            "pass one with --params=dataset_name=<name>"
        )
    return name


def resolve_dataset_name(runtime_name: str = "", runtime_raw_path: str = "", env_name: str = "") -> str:
    """The data set name by the rule in the module docstring; a bad name raises ValueError."""
    runtime_name, runtime_raw_path, env_name = (str(v or "").strip() for v in (runtime_name, runtime_raw_path, env_name))
    if runtime_name:
        name, where = runtime_name, "--params=dataset_name"
    elif runtime_raw_path:
        name, where = name_from_path(runtime_raw_path), f"the last part of raw_images_path {runtime_raw_path!r}"
    else:
        name, where = env_name, "dataset_name in conf/<env>/globals.yml"
    if not _VALID.match(name) or name in {".", ".."}:
        raise ValueError(
            f"Invalid data set name {name!r} (from {where}): use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit; it becomes a folder name under data/<stage>/"
        )
    return name


def demo_data_enabled(runtime_raw_path: str = "") -> bool:
    """The synthetic demo set is generated unless ``--params=raw_images_path`` names other images."""
    return not str(runtime_raw_path or "").strip()
