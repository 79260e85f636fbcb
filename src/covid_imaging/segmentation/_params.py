"""Re-export of the project's one parameter merger (:mod:`covid_imaging.params`)."""

from covid_imaging.params import merge_params

__all__ = ["merge_params"]
