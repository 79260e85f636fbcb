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
    as_float32,
    build_callbacks,
    compile_model,
    configure_gpus,
    describe_device,
    device_settings,
    dtype_policy_for,
    fit_model,
    make_optimizer,
    native_bfloat16_cpu,
    precision_policy,
    resolve_training_params,
    seed_everything,
    step_decay,
    training_device,
)

__all__ = [
    "CORE_TRAINING_DEFAULTS", "DEVICE_KEYS", "BestWeightsKeeper", "LearningRateRecorder", "LinearWarmup", "PreciseBatchNorm",
    "as_float32", "batchnorm_layers", "build_callbacks", "compile_model", "configure_gpus", "describe_device", "device_settings", "dtype_policy_for", "fit_model", "make_optimizer", "merge_params",
    "native_bfloat16_cpu", "precision_policy", "recompute_batchnorm_statistics", "resolve_training_params", "seed_everything", "set_batchnorm_momentum", "step_decay",
    "training_device",
]
