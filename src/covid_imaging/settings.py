"""Project settings (Kedro reads this module at start-up)."""

from kedro.config import OmegaConfigLoader  # noqa: F401

# Parameters from an environment (e.g. conf/shared_data) are deep-merged into base, so an
# environment only states what differs; catalog entries are replaced whole.
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
}

from covid_imaging.hooks import ModelRunTrackingHook  # noqa: E402

# Hooks run last-in-first-out; kedro-mlflow's own hook (auto-registered) opens the parent run.
HOOKS = (ModelRunTrackingHook(),)
