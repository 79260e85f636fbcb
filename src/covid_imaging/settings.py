"""Project settings (Kedro reads this module at start-up)."""

from kedro.config import OmegaConfigLoader  # noqa: F401

# Importing it hides the third-party start-up warnings named there (also for `python -m` and
# notebooks, where Kedro's CLI entry point that imports it first does not run).
import covid_imaging.quiet  # noqa: F401
from covid_imaging.dataset_names import (
    DEMO_RESOLVER,
    RESOLVER,
    demo_data_enabled,
    resolve_dataset_name,
)

# Parameters from an environment (e.g. conf/shared_data) are deep-merged into base, so an
# environment only states what differs; catalog entries are replaced whole.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
    # ${dataset_name:...}: the one rule naming the data set that namespaces the outputs
    "custom_resolvers": {RESOLVER: resolve_dataset_name, DEMO_RESOLVER: demo_data_enabled},
}

from covid_imaging.hooks import ModelRunTrackingHook, ParallelRunnerCatalogCheck  # noqa: E402

# Hooks run last-in-first-out; kedro-mlflow's own hook (auto-registered) opens the parent run.
HOOKS = (ModelRunTrackingHook(), ParallelRunnerCatalogCheck())
