"""The one training core shared by the segmentation and classification models."""

from covid_imaging.params import merge_params
from covid_imaging.training.batchnorm import (
    PreciseBatchNorm,
    batchnorm_layers,
    recompute_batchnorm_statistics,
    set_batchnorm_momentum,
)
from covid_imaging.training.core import (
    CORE_TRAINING_DEFAULTS,
    DEVICE_KEYS,
    BestWeightsKeeper,
    LearningRateRecorder,
    LinearWarmup,
    build_callbacks,
    compile_model,
    configure_gpus,
    describe_device,
    fit_model,
    make_optimizer,
    precision_policy,
    resolve_training_params,
    seed_everything,
    step_decay,
    training_device,
)

__all__ = [
    "CORE_TRAINING_DEFAULTS", "DEVICE_KEYS", "BestWeightsKeeper", "LearningRateRecorder", "LinearWarmup", "PreciseBatchNorm",
    "batchnorm_layers", "build_callbacks", "compile_model", "configure_gpus", "describe_device", "fit_model", "make_optimizer", "merge_params",
    "precision_policy", "recompute_batchnorm_statistics", "resolve_training_params", "seed_everything", "set_batchnorm_momentum", "step_decay",
    "training_device",
]
