"""The one training core of the segmentation and classification models.

One parameter schema (``CORE_TRAINING_DEFAULTS``, merged with
:func:`~covid_imaging.params.merge_params`: unknown keys fail with their name),
one optimizer factory, one callback set (linear warm-up, step or cosine decay, reduce-on-plateau,
early stopping, best weights restored in every case, the learning rate of each epoch
recorded), one seeding/determinism set-up and one device/precision set-up that restores
the global Keras dtype policy when it exits. The task wrappers
(:func:`covid_imaging.classification.training.train_classifier`,
:func:`covid_imaging.segmentation.training.train_segmentation_model`) only add their
loss, metrics and task-specific defaults::

    epochs: 50
    min_steps: 0                    # > 0: more epochs when a small data set gives fewer
                                    #   optimizer steps than this in ``epochs`` epochs
    optimizer: adam                 # adam | sgd
    learning_rate: null             # null: adam 1e-3, sgd 1e-2
    momentum: 0.8                   # sgd only
    weight_decay: null              # null: adam none, sgd 1e-4 (decoupled)
    warmup_epochs: 0                # linear LR warm-up, per step, over the first n epochs
    lr_drop_epochs: []              # 0-based epochs at whose start the LR is multiplied by
    lr_drop_factor: 0.1             #   lr_drop_factor (the HRNet recipe's step decay)
    cosine_decay: false             # true: the LR falls along a half cosine from learning_rate
                                    #   (first epoch) towards 0 (after the last); not with
                                    #   reduce_lr or lr_drop_epochs
    reduce_lr: {enabled: true, patience: 5, factor: 0.1, min_lr: 1.0e-7}
    early_stopping: {enabled: true, patience: 10, min_delta: 0.0}
    batchnorm_momentum: null        # null: the layers' own (Keras: 0.99)
    batchnorm_recompute_batches: 0  # > 0: after each epoch's last step, BatchNorm moving
                                    #   statistics = mean over this many training batches
    seed: null                      # seeds Python, NumPy and TF before training
    deterministic: true             # tf.config.experimental.enable_op_determinism
    mixed_precision: false          # false | true (mixed_float16, GPU only) | bfloat16 (mixed_bfloat16
                                    #   where the chip computes it natively: a GPU, or a CPU with
                                    #   AMX-BF16/AVX512-BF16; float32 elsewhere); the trained model
                                    #   is returned in float32 either way
    multi_gpu: false                # MirroredStrategy over all visible GPUs
    verbose: 0
    run_eagerly: false              # debugging / tiny CPU runs: skips graph tracing
    jit_compile: auto               # XLA: auto | true | false
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras.src.backend.common import global_state as keras_global_state
from keras.src.random import seed_generator as keras_seed_generator
from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

from covid_imaging.params import merge_params
from covid_imaging.progress import format_duration
from covid_imaging.training.batchnorm import PreciseBatchNorm, set_batchnorm_momentum

logger = logging.getLogger(__name__)

History = dict[str, list[float]]

OPTIMIZERS = ("adam", "sgd")
_DEFAULT_LEARNING_RATES = {"adam": 1e-3, "sgd": 1e-2}
_DEFAULT_WEIGHT_DECAY = {"adam": None, "sgd": 1e-4}

CORE_TRAINING_DEFAULTS: dict[str, Any] = {
    "epochs": 50,
    "min_steps": 0,
    "optimizer": "adam",
    "learning_rate": None,
    "momentum": 0.8,
    "weight_decay": None,
    "warmup_epochs": 0,
    "lr_drop_epochs": [],
    "lr_drop_factor": 0.1,
    "cosine_decay": False,
    "reduce_lr": {"enabled": True, "patience": 5, "factor": 0.1, "min_lr": 1e-7},
    "early_stopping": {"enabled": True, "patience": 10, "min_delta": 0.0},
    "batchnorm_momentum": None,
    "batchnorm_recompute_batches": 0,
    "seed": None,
    "deterministic": True,
    "mixed_precision": False,
    "multi_gpu": False,
    "verbose": 0,
    "run_eagerly": False,
    "jit_compile": "auto",
}
DEVICE_KEYS = ("mixed_precision", "multi_gpu")
MIXED_PRECISION_CHOICES = (False, True, "bfloat16")


def _checked_mixed_precision(value: Any, where: str) -> bool | str:
    if value not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"{where}.mixed_precision must be false, true or 'bfloat16', got {value!r}")
    return value


def resolve_training_params(
    params: Mapping[str, Any] | None,
    task_defaults: Mapping[str, Any] | None = None,
    *,
    where: str = "training",
) -> dict[str, Any]:
    """The complete, checked training parameters: core defaults, then the task's, then ``params``.

    ``task_defaults`` may change core defaults and add the task's own keys (e.g. the
    segmentation ``loss``); any other key in ``params`` raises with its name.
    """
    defaults = {**CORE_TRAINING_DEFAULTS, **dict(task_defaults or {})}
    resolved = merge_params(defaults, params, where=where)
    if resolved["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"{where}.optimizer must be one of {list(OPTIMIZERS)}, got {resolved['optimizer']!r}")
    _checked_mixed_precision(resolved["mixed_precision"], where)
    if resolved["jit_compile"] not in (True, False, "auto"):
        raise ValueError(f"{where}.jit_compile must be true, false or 'auto', got {resolved['jit_compile']!r}")
    if int(resolved["epochs"]) < 1:
        raise ValueError(f"{where}.epochs must be >= 1, got {resolved['epochs']}")
    if int(resolved["min_steps"]) < 0:
        raise ValueError(f"{where}.min_steps must be >= 0, got {resolved['min_steps']}")
    if int(resolved["batchnorm_recompute_batches"]) < 0:
        raise ValueError(f"{where}.batchnorm_recompute_batches must be >= 0, got {resolved['batchnorm_recompute_batches']}")
    if int(resolved["warmup_epochs"]) < 0:
        raise ValueError(f"{where}.warmup_epochs must be >= 0, got {resolved['warmup_epochs']}")
    resolved["lr_drop_epochs"] = [int(epoch) for epoch in resolved["lr_drop_epochs"] or ()]
    if resolved["cosine_decay"] not in (True, False):
        raise ValueError(f"{where}.cosine_decay must be true or false, got {resolved['cosine_decay']!r}")
    if resolved["cosine_decay"] and (resolved["reduce_lr"]["enabled"] or resolved["lr_drop_epochs"]):
        # two rules setting the rate each epoch would overwrite each other
        raise ValueError(f"{where}.cosine_decay sets the learning rate of every epoch: switch off "
                         f"{where}.reduce_lr (enabled: false) and leave {where}.lr_drop_epochs empty")
    if resolved["learning_rate"] is None:
        resolved["learning_rate"] = _DEFAULT_LEARNING_RATES[resolved["optimizer"]]
    if resolved["weight_decay"] is None:
        resolved["weight_decay"] = _DEFAULT_WEIGHT_DECAY[resolved["optimizer"]]
    return resolved


def make_optimizer(params: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """Adam or SGD with momentum, with (decoupled) weight decay where configured."""
    weight_decay = None if params["weight_decay"] is None else float(params["weight_decay"])
    if params["optimizer"] == "sgd":
        return keras.optimizers.SGD(
            learning_rate=float(params["learning_rate"]), momentum=float(params["momentum"]), weight_decay=weight_decay
        )
    return keras.optimizers.Adam(learning_rate=float(params["learning_rate"]), weight_decay=weight_decay)


# ------------------------------------------------------------------ callbacks


class BestWeightsKeeper(keras.callbacks.Callback):
    """Remember the weights of the epoch with the lowest ``monitor`` and restore them.

    Unlike ``EarlyStopping(restore_best_weights=True)`` this also restores when
    training runs all its epochs, and it works with early stopping switched off.
    """

    def __init__(self, monitor: str = "val_loss") -> None:
        super().__init__()
        self.monitor = monitor
        self.best_value = np.inf
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.best_value, self.best_epoch, self.best_weights = np.inf, None, None

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        # A NaN loss compares False with everything, so it is never "best".
        if value is not None and float(value) < self.best_value:
            self.best_value, self.best_epoch = float(value), epoch
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class LearningRateRecorder(keras.callbacks.Callback):
    """Record the learning rate each epoch ends with (after warm-up, before any reduction)."""

    def __init__(self) -> None:
        super().__init__()
        self.learning_rates: list[float] = []

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self.learning_rates = []

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        # During warm-up the rate rises within the epoch; the one recorded is the
        # epoch's last (ReduceLROnPlateau, later in the callback list, acts after this).
        self.learning_rates.append(_current_learning_rate(self.model))


class LinearWarmup(keras.callbacks.Callback):
    """Raise the learning rate linearly from ``target / steps`` to ``target`` over the
    first ``warmup_epochs`` epochs, step by step.

    A deep network from random weights at the full Adam rate takes large first steps
    that its BatchNorm statistics cannot follow; a short warm-up avoids them.
    """

    def __init__(self, warmup_epochs: int) -> None:
        super().__init__()
        self.warmup_epochs = int(warmup_epochs)
        self._target: float | None = None
        self._epoch = 0

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._target = _current_learning_rate(self.model)

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._epoch >= self.warmup_epochs or self._target is None:
            return
        steps = self.params.get("steps") or 1
        done = self._epoch * steps + batch + 1
        self.model.optimizer.learning_rate = self._target * min(1.0, done / (self.warmup_epochs * steps))

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if epoch + 1 == self.warmup_epochs and self._target is not None:
            self.model.optimizer.learning_rate = self._target


class CosineDecay(keras.callbacks.Callback):
    """Learning rate of epoch ``e`` of a fit from epoch ``first`` to ``last``:
    ``rate · ½ (1 + cos(π (e − first) / (last − first)))``, ``rate`` the one training starts with.

    Per epoch, and from the epochs the fit really runs (``min_steps`` may add some), which
    Keras' ``CosineDecay`` schedule (fixed step count, an optimizer object the other
    callbacks cannot set) does not give. A warm-up still ramps its first epochs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rate: float | None = None
        self._first: int | None = None

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._rate, self._first = _current_learning_rate(self.model), None

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if self._first is None:
            self._first = epoch
        span = max(1, int(self.params["epochs"]) - self._first)
        self.model.optimizer.learning_rate = self._rate * 0.5 * (1.0 + math.cos(math.pi * (epoch - self._first) / span))


class EpochProgress(keras.callbacks.Callback):
    """Logs ``<name>: epoch 3/20 (loss ..., val_loss ...), ... elapsed, ETA ...`` after every epoch
    (early stopping may end sooner)."""

    SHOWN = ("loss", "val_loss", "dice_coefficient", "val_dice_coefficient", "val_balanced_accuracy")

    def __init__(self, name: str, epochs: int, initial_epoch: int = 0) -> None:
        super().__init__()
        self.name, self.epochs, self.initial_epoch = name, int(epochs), int(initial_epoch)
        self._started = 0.0

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        done, elapsed = epoch + 1, time.monotonic() - self._started
        metrics = ", ".join(f"{key} {float(value):.4f}" for key, value in (logs or {}).items() if key in self.SHOWN)
        eta = elapsed / max(1, done - self.initial_epoch) * (self.epochs - done)
        logger.info("%s: epoch %d/%d (%s), %s elapsed, ETA %s", self.name, done, self.epochs, metrics,
                    format_duration(elapsed), format_duration(eta) if done < self.epochs else "done")


def _current_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def step_decay(drop_epochs: Sequence[int], factor: float = 0.1) -> Callable[[int, float], float]:
    """Keras ``LearningRateScheduler`` function multiplying the LR at ``drop_epochs``.

    It works on the current rate, so it composes with ReduceLROnPlateau.
    """
    drops = frozenset(drop_epochs)

    def schedule(epoch: int, learning_rate: float) -> float:
        return float(learning_rate) * factor if epoch in drops else float(learning_rate)

    return schedule


def build_callbacks(params: Mapping[str, Any], monitor: str) -> list[keras.callbacks.Callback]:
    """Cosine decay, warm-up, step decay, ReduceLROnPlateau and EarlyStopping as configured in ``params``.

    :func:`fit_model` adds the learning-rate recorder and :class:`BestWeightsKeeper`.
    """
    callbacks: list[keras.callbacks.Callback] = []
    if params["cosine_decay"]:
        callbacks.append(CosineDecay())
    if int(params["warmup_epochs"]) > 0:
        callbacks.append(LinearWarmup(int(params["warmup_epochs"])))
    if params["lr_drop_epochs"]:
        callbacks.append(
            keras.callbacks.LearningRateScheduler(step_decay(params["lr_drop_epochs"], float(params["lr_drop_factor"])))
        )
    reduce_lr = params["reduce_lr"]
    if reduce_lr["enabled"]:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, patience=int(reduce_lr["patience"]), factor=float(reduce_lr["factor"]),
                min_lr=float(reduce_lr["min_lr"]),
            )
        )
    stopping = params["early_stopping"]
    if stopping["enabled"]:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=monitor, patience=int(stopping["patience"]), min_delta=float(stopping["min_delta"]),
                # BestWeightsKeeper restores in every case, not only after a stop.
                restore_best_weights=False,
            )
        )
    return callbacks


# ------------------------------------------------------------ seeds and devices


class _SeedToken(int):
    """The seed as :func:`seed_everything` hands it to Keras, which keeps that very object
    (per thread) as its global seed: identity tells whether a later
    ``keras.utils.set_random_seed`` has replaced it, even with the same number."""


class _ThreadSeededRandom:
    """What Keras draws its default layer and initializer seeds from (``randint``).

    Keras takes them from Python's global ``random``, which every thread shares: in a
    Dask worker (or under Kedro's ThreadRunner) other threads draw from it while a model
    is built, so the same seed gave other weights and other training. The thread that
    called :func:`seed_everything` draws from its own seeded generator instead, until
    Keras' seed is set again in that thread (then plain ``keras.utils.set_random_seed``
    reproduces builds as usual); other threads keep the global one. No Keras API exists
    for this, hence the module attribute.
    """

    _local = threading.local()

    def seed(self, seed: _SeedToken) -> None:
        self._local.token = seed
        self._local.generator = random.Random(int(seed))

    def randint(self, low: int, high: int) -> int:
        token = getattr(self._local, "token", None)
        if token is not None and keras_global_state.get_global_attribute(GLOBAL_RANDOM_SEED) is token:
            return self._local.generator.randint(low, high)
        return random.randint(low, high)

    def __getattr__(self, name: str) -> Any:  # anything else Keras may use: the global module
        return getattr(random, name)


_KERAS_SEEDS = _ThreadSeededRandom()
keras_seed_generator.python_random = _KERAS_SEEDS


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python's ``random``, NumPy and TensorFlow/Keras, and this thread's draws of
    Keras' layer seeds; with ``deterministic``, also make TensorFlow ops deterministic
    where it can (same seed, same run, on one machine, whatever other threads do)."""
    token = _SeedToken(int(seed))
    keras.utils.set_random_seed(token)
    _KERAS_SEEDS.seed(token)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def precision_policy(policy: str) -> Iterator[None]:
    """Make ``policy`` the global Keras dtype policy inside the block, and restore the
    previous one on exit: layers keep the policy they were built with, and the next
    model built in this process does not inherit it."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def configure_gpus() -> list[Any]:
    """Let TensorFlow grow its GPU memory instead of grabbing all of it; the GPUs."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # Already initialised: the setting can no longer change.
    return gpus


@functools.cache
def _proc_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            return file.read()
    except OSError:  # not Linux
        return ""


def native_bfloat16_cpu(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX-BF16 or AVX512-BF16 in ``/proc/cpuinfo``).

    Elsewhere oneDNN emulates bfloat16, slower than float32. Not Linux: ``False``.
    """
    if cpuinfo is None:
        cpuinfo = _proc_cpuinfo()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def dtype_policy_for(mixed_precision: bool | str, has_gpu: bool) -> str:
    """The Keras dtype policy that ``mixed_precision`` (``false | true | 'bfloat16'``) means on this machine.

    ``true``: ``mixed_float16`` on a GPU, ``float32`` on a CPU (float16 is emulated there).
    ``'bfloat16'``: ``mixed_bfloat16`` on a GPU or a CPU that computes it natively, else ``float32``.
    """
    if _checked_mixed_precision(mixed_precision, "training") == "bfloat16":
        return "mixed_bfloat16" if has_gpu or native_bfloat16_cpu() else "float32"
    return "mixed_float16" if mixed_precision is True and has_gpu else "float32"


@contextlib.contextmanager
def training_device(mixed_precision: bool | str = False, multi_gpu: bool = False) -> Iterator[tf.distribute.Strategy]:
    """The distribution strategy and dtype policy for building (and training) one model.

    - ``MirroredStrategy`` only with more than one GPU and ``multi_gpu``; otherwise the
      default (single device) strategy;
    - the dtype policy of :func:`dtype_policy_for` (``float32`` unless asked and the chip
      computes the smaller type natively); the previous global policy is restored on exit.

    Build the model inside ``with training_device(...) as strategy, strategy.scope():``.
    """
    gpus = configure_gpus()
    strategy = tf.distribute.MirroredStrategy() if multi_gpu and len(gpus) > 1 else tf.distribute.get_strategy()
    with precision_policy(dtype_policy_for(mixed_precision, bool(gpus))):
        yield strategy


def device_settings(phases: Mapping[str, Mapping[str, Any] | None]) -> tuple[bool | str, bool]:
    """``(mixed_precision, multi_gpu)`` of a model trained in phases (e.g. ``main``, or ``head`` then
    ``fine_tune``): the model is built once, so every phase must ask for the same."""
    found = {
        name: tuple((block or {}).get(key, CORE_TRAINING_DEFAULTS[key]) for key in DEVICE_KEYS)
        for name, block in phases.items()
    }
    if len(set(found.values())) > 1:
        raise ValueError(
            f"training: {' and '.join(DEVICE_KEYS)} must be the same in every phase (one model is built "
            f"once), got {found}"
        )
    mixed_precision, multi_gpu = next(iter(found.values()), (False, False))
    return _checked_mixed_precision(mixed_precision, "training"), bool(multi_gpu)


def as_float32(model: keras.Model) -> keras.Model:
    """``model`` computing in float32 (the same weights), or ``model`` itself if it already does.

    A model trained under a mixed policy is saved this way, so it predicts the same on any
    machine, including CPUs that would emulate bfloat16 or float16.
    """
    if all(layer.compute_dtype in (None, "float32") for layer in model._flatten_layers(include_self=False)):
        return model

    def rebuild(layer: keras.layers.Layer) -> keras.layers.Layer:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    with precision_policy("float32"):  # recursive: the layers of nested models too
        converted = keras.models.clone_model(model, clone_function=rebuild, recursive=True)
    converted.set_weights(model.get_weights())
    return converted


def describe_device() -> str:
    """ "CPU", or the first GPU's name (prefixed with the count if several), for run tags."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    name = str(details.get("device_name", gpus[0].name))
    return name if len(gpus) == 1 else f"{len(gpus)}x {name}"


# ------------------------------------------------------------------- fitting


def compile_model(model: keras.Model, params: Mapping[str, Any], *, loss: Any, metrics: Sequence[Any] = ()) -> None:
    """Compile with the configured optimizer, ``loss`` and ``metrics`` (resolved ``params``)."""
    # Optimizer variables must live in the strategy the model was built under.
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=make_optimizer(params), loss=loss, metrics=list(metrics),
            run_eagerly=bool(params["run_eagerly"]), jit_compile=params["jit_compile"],
        )


def epochs_for_min_steps(train_ds: tf.data.Dataset, epochs: int, min_steps: int, initial_epoch: int = 0) -> int:
    """The last epoch to train to: ``epochs``, or later when the phase's
    ``epochs - initial_epoch`` epochs give fewer than ``min_steps`` optimizer steps
    (a few dozen images make a handful of batches per epoch)."""
    if min_steps <= 0:
        return epochs
    steps_per_epoch = int(train_ds.cardinality())
    if steps_per_epoch < 1:  # tf.data's UNKNOWN (-2) or INFINITE (-1) cardinality
        raise ValueError("training.min_steps needs a training dataset whose number of batches tf.data knows")
    return max(epochs, initial_epoch + math.ceil(min_steps / steps_per_epoch))


def fit_model(
    model: keras.Model,
    train_ds: tf.data.Dataset,
    val_ds: tf.data.Dataset | None,
    params: Mapping[str, Any],
    *,
    loss: Any,
    metrics: Sequence[Any] = (),
    class_weight: Mapping[int, float] | None = None,
    extra_callbacks: Iterable[keras.callbacks.Callback] = (),
    initial_epoch: int = 0,
    compile: bool = True,  # noqa: A002 - keras' own word
    name: str | None = None,
) -> tuple[keras.Model, History]:
    """Compile (so trainability changes take effect) and fit ``model`` with the core callbacks.

    ``params`` are resolved training parameters (:func:`resolve_training_params`).
    Returns the model with the weights of its best epoch (lowest ``val_loss``, or
    ``loss`` without validation data) and the history: every logged metric and ``lr``
    (the rate each epoch ended with), one float per epoch run.
    """
    if params["seed"] is not None:
        seed_everything(int(params["seed"]), bool(params["deterministic"]))
    elif params["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    if params["batchnorm_momentum"] is not None:
        set_batchnorm_momentum(model, float(params["batchnorm_momentum"]))
    if compile:
        compile_model(model, params, loss=loss, metrics=metrics)
    monitor = "val_loss" if val_ds is not None else "loss"
    if int(params["batchnorm_recompute_batches"]) > 0:
        extra_callbacks = [PreciseBatchNorm(train_ds, int(params["batchnorm_recompute_batches"])), *extra_callbacks]
    learning_rates = LearningRateRecorder()
    best_weights = BestWeightsKeeper(monitor)
    epochs = epochs_for_min_steps(train_ds, int(params["epochs"]), int(params["min_steps"]), int(initial_epoch))
    # one log line per epoch with an ETA, named after the model (``name`` or the Keras model's)
    extra_callbacks = [*extra_callbacks, EpochProgress(name or model.name, epochs, int(initial_epoch))]
    fit_history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=epochs,
        initial_epoch=int(initial_epoch),
        callbacks=_ordered_callbacks(params, monitor, learning_rates, extra_callbacks, best_weights),
        class_weight=dict(class_weight) if class_weight else None,
        verbose=int(params["verbose"]),
        shuffle=False,  # the tf.data pipelines shuffle themselves (seeded)
    )
    history = {
        name: [float(value) for value in values]
        for name, values in fit_history.history.items()
        # ReduceLROnPlateau logs the rate AFTER its update; "lr" below is the one used.
        if name != "learning_rate"
    }
    history["lr"] = list(learning_rates.learning_rates)
    return model, history


def _ordered_callbacks(params, monitor, learning_rates, extra_callbacks, best_weights):
    """Cosine decay, warm-up and step decay, then the recorder, then plateau/stopping, extras, best weights.

    The recorder sits after the schedules (it sees the rate they set) and before
    ReduceLROnPlateau (it records the rate the epoch trained with, not the reduced one).
    """
    configured = build_callbacks(params, monitor)
    schedules = [c for c in configured if isinstance(c, CosineDecay | LinearWarmup | keras.callbacks.LearningRateScheduler)]
    others = [c for c in configured if c not in schedules]
    return [*schedules, learning_rates, *others, *extra_callbacks, best_weights]
