"""Benchmark: segmentation training and inference throughput on this machine.

Prints, for one model (default: the reference 7.8 M-parameter U-Net, base_filters 32):
  * the model and its parameter count, the device and TensorFlow's CPU threads;
  * TRAINING images/second (``model.fit``, Adam + bce_dice + Dice/IoU metrics, compiled as
    ``train_segmentation_model`` does) with
      - the real input pipeline: ``make_segmentation_dataset`` decoding + resizing the PNGs
        from disk and augmenting them (the augmentation settings of
        conf/base/parameters/segmentation.yml), exactly as the training node uses it, and
      - the same model fed the same images already decoded in memory
        (``make_in_memory_dataset``),
    same batch size, same run, and their ratio (input-pipeline overhead). Each figure is
    timed over a fixed number of steps AFTER warm-up steps inside the same ``fit`` call,
    so graph tracing and pipeline start-up are excluded;
  * the same at a second, smaller size (default 128x128);
  * INFERENCE images/second with ``model.predict_on_batch`` at batch 1 and batch 32
    (after warm-up calls);
  * END-TO-END wall time of a small training job: build the model, ``train_segmentation_model``
    for 2 epochs on N images (with a held-out validation set, as the pipeline does, and
    graph tracing included), then predict the N images from disk (``make_inference_dataset``).

The issue's reference figures (2 CPU cores, 7.8 M-parameter U-Net) are printed next to
the measured ones; they are only comparable for ``--model unet --base-filters 32``.
No asserts: this script only prints figures.

Usage:
    python benchmarks/segmentation.py [--data ../shared/data/cxr_segmentation/shenzhen]
        [--model unet] [--image-size 256] [--base-filters 32] [--n-images 64]
        [--batches 6] [--quick]

``--quick`` is a smoke run (64x64, fewer steps), well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from covid_imaging.segmentation.data import (  # noqa: E402
    make_in_memory_dataset,
    make_inference_dataset,
    make_segmentation_dataset,
)
from covid_imaging.segmentation.losses import (  # noqa: E402
    dice_coefficient,
    get_segmentation_loss,
    iou_coefficient,
)
from covid_imaging.segmentation.models import (  # noqa: E402
    MODEL_BUILDERS,
    build_segmentation_model,
)
from covid_imaging.segmentation.training import (  # noqa: E402
    DEFAULT_TRAINING_PARAMS,
    configure_device,
    describe_device,
    set_global_seed,
    train_segmentation_model,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cxr_segmentation" / "shenzhen"
SEGMENTATION_PARAMS = PROJECT_ROOT / "conf" / "base" / "parameters" / "segmentation.yml"
SEED = 42

# The figures: 2 CPU cores, 7.8 M-parameter U-Net (base_filters 32).
REFERENCE_PARAMS = 7.8e6
REFERENCE_TRAIN_IMG_S = {256: 2.5, 128: 9.5}
REFERENCE_INFER_IMG_S = {256: 8.5}

# option: (normal default, --quick default)
DEFAULTS: dict[str, tuple[int, int]] = {
    "image_size": (256, 64),
    "compare_size": (128, 0),
    "n_images": (64, 32),
    "batches": (6, 4),
    "warmup": (2, 1),
    "e2e_images": (32, 16),
    "epochs": (2, 2),
    "predict_repeats": (3, 3),
}


@dataclass
class Rate:
    """Images processed in a timed window, and the per-step durations inside it."""

    images: int
    seconds: float
    step_seconds: list[float]
    warmup_seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.images / self.seconds

    @property
    def median_per_second(self) -> float:
        """Images/s from the median step: robust to a neighbour grabbing the cores briefly."""
        return self.images / len(self.step_seconds) / statistics.median(self.step_seconds)


class StepTimer(keras.callbacks.Callback):
    """Time stamp at the end of every training step (after the step's result is ready)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if logs and "loss" in logs:
            float(logs["loss"])  # wait for the step (matters on an asynchronous GPU)
        self.times.append(time.perf_counter())


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch, validation included."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with images/ and masks/ (PNG, same file names)")
    parser.add_argument("--model", choices=sorted(MODEL_BUILDERS), default="unet")
    parser.add_argument("--base-filters", type=int, default=32,
                        help="32 = the reference 7.8 M-parameter U-Net (the pipeline's CPU conf uses 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size (pipeline: 8)")
    parser.add_argument("--image-size", type=int, help="main input size (default 256; --quick 64)")
    parser.add_argument("--compare-size", type=int,
                        help="second, smaller training size (default 128; 0 skips it, as --quick does)")
    parser.add_argument("--n-images", type=int,
                        help="images in the pool the throughput runs cycle over (default 64; --quick 32)")
    parser.add_argument("--batches", type=int,
                        help="timed training steps per measurement at --image-size (default 6; --quick 4)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (default 2; --quick 1)")
    parser.add_argument("--e2e-images", type=int,
                        help="training images of the end-to-end job (default 32; --quick 16)")
    parser.add_argument("--epochs", type=int, help="epochs of the end-to-end job (default 2)")
    parser.add_argument("--predict-repeats", type=int,
                        help="timed batch-32 inference calls (default 3; batch 1 gets 10x as many)")
    parser.add_argument("--quick", action="store_true", help="fast smoke run at 64x64")
    args = parser.parse_args()
    for name, (normal, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else normal)
    args.warmup = max(1, args.warmup)
    return args


def find_pairs(data: Path) -> list[tuple[str, str]]:
    """(image, mask) path pairs of the PNGs present in both ``images/`` and ``masks/``."""
    image_dir, mask_dir = data / "images", data / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        sys.exit(
            f"Segmentation data not found: expected {image_dir} and {mask_dir} "
            "(PNG images and masks with the same file names). Pass --data FOLDER."
        )
    names = sorted(p.name for p in image_dir.glob("*.png") if (mask_dir / p.name).is_file())
    if not names:
        sys.exit(f"No PNG image in {image_dir} has a mask of the same name in {mask_dir}.")
    return [(str(image_dir / name), str(mask_dir / name)) for name in names]


def pipeline_augmentation() -> dict:
    """The augmentation ops of the pipeline's conf (``{}`` = library defaults if unreadable)."""
    try:
        conf = yaml.safe_load(SEGMENTATION_PARAMS.read_text())
        ops = dict(conf["_segmentation_defaults"]["augmentation"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}
    ops.pop("enabled", None)
    return ops


def compile_like_pipeline(model: keras.Model) -> None:
    """Compile exactly as ``train_segmentation_model`` does with its default parameters."""
    params = DEFAULT_TRAINING_PARAMS
    with model.distribute_strategy.scope():
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=float(params["learning_rate"])),
            loss=get_segmentation_loss(params["loss"]),
            metrics=[dice_coefficient, iou_coefficient],
            jit_compile=params["jit_compile"],
            run_eagerly=bool(params["run_eagerly"]),
        )


def build(args: argparse.Namespace, image_size: int) -> keras.Model:
    set_global_seed(SEED)
    return build_segmentation_model(args.model, input_size=image_size, base_filters=args.base_filters)


def load_in_memory(pairs: list[tuple[str, str]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode + resize the pairs once with the library's own loaders (no augmentation)."""
    dataset = make_segmentation_dataset(
        [i for i, _ in pairs], [m for _, m in pairs], image_size, 32,
        shuffle=False, augment_params=None, seed=SEED,
    )
    batches = [(x.numpy(), y.numpy()) for x, y in dataset]
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def time_fit(model: keras.Model, dataset: tf.data.Dataset, warmup: int, steps: int,
             batch_size: int) -> Rate:
    """One ``fit`` call of ``warmup + steps`` steps; only the last ``steps`` are timed."""
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0)
    window = timer.times[warmup - 1:]
    return Rate(steps * batch_size, window[-1] - window[0], list(np.diff(window)), window[0] - start)


def time_predict(model: keras.Model, images: np.ndarray, batch: int, repeats: int) -> Rate:
    """``predict_on_batch`` on the same ``batch`` images ``repeats`` times, after 2 warm-up calls."""
    x = tf.constant(images[np.arange(batch) % len(images)])
    for _ in range(2):
        model.predict_on_batch(x)  # tracing (a new batch size retraces) and first-call costs
    steps = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)  # returns NumPy, so the result is really computed
        steps.append(time.perf_counter() - start)
    return Rate(batch * repeats, sum(steps), steps)


def fmt_rate(rate: Rate) -> str:
    return (f"{rate.per_second:7.2f} img/s  (median step {rate.median_per_second:6.2f} img/s; "
            f"{rate.images} images in {rate.seconds:5.1f} s)")


def vs_reference(measured: float, reference: float | None) -> str:
    if reference is None:
        return ""
    return f"   [issue reference {reference:.1f} img/s -> x{measured / reference:.2f}]"


def training_throughput(args: argparse.Namespace, pairs: list[tuple[str, str]], model: keras.Model,
                        steps: int, augmentation: dict) -> np.ndarray:
    """Print streamed-vs-in-memory training rates of ``model``; return the in-memory images."""
    bs = args.batch_size
    image_size = model.input_shape[1]
    pool = pairs[: max(bs, (min(args.n_images, len(pairs)) // bs) * bs)]  # whole batches only
    compile_like_pipeline(model)
    images, masks = load_in_memory(pool, image_size)
    streamed = make_segmentation_dataset(
        [i for i, _ in pool], [m for _, m in pool], image_size, bs,
        shuffle=True, augment_params=augmentation, seed=SEED,
    ).repeat()
    in_memory = make_in_memory_dataset(images, masks, bs).repeat()

    print(f"\n== TRAINING {image_size}x{image_size}, batch {bs}, model.fit: {args.warmup} warm-up "
          f"+ {steps} timed steps ({steps * bs} images) per row, pool of {len(pool)} images ==")
    start = time.perf_counter()
    stream_rate = time_fit(model, streamed, args.warmup, steps, bs)
    print(f"  real input pipeline (PNG from disk + decode/resize + augmentation): {fmt_rate(stream_rate)}"
          f"{vs_reference(stream_rate.per_second, reference_train(args, image_size))}")
    memory_rate = time_fit(model, in_memory, args.warmup, steps, bs)
    print(f"  in-memory tensors (make_in_memory_dataset):                         {fmt_rate(memory_rate)}")
    ratio = memory_rate.per_second / stream_rate.per_second
    median_ratio = memory_rate.median_per_second / stream_rate.median_per_second
    print(f"  untimed warm-up: {stream_rate.warmup_seconds:.1f} s real pipeline (incl. graph tracing), "
          f"{memory_rate.warmup_seconds:.1f} s in-memory")
    print(f"  in-memory / real pipeline speed: x{ratio:.2f} (median steps: x{median_ratio:.2f}) "
          f"-> input-pipeline overhead {100 * (1 - 1 / ratio):+.0f}% of the training time "
          f"(section: {time.perf_counter() - start:.0f} s)")
    return images


def reference_train(args: argparse.Namespace, image_size: int) -> float | None:
    return REFERENCE_TRAIN_IMG_S.get(image_size) if is_reference_model(args) else None


def is_reference_model(args: argparse.Namespace) -> bool:
    return args.model == "unet" and args.base_filters == 32


def end_to_end(args: argparse.Namespace, pairs: list[tuple[str, str]], augmentation: dict) -> None:
    """Build, train ``epochs`` epochs on N images (+ validation), predict the N images."""
    n_train = min(args.e2e_images, len(pairs) - 1)
    n_val = max(1, min(n_train // 4, len(pairs) - n_train))
    train, val = pairs[-n_train:], pairs[:n_val]  # disjoint ends of the sorted list
    size, bs = args.image_size, args.batch_size
    print(f"\n== END-TO-END {size}x{size}: build, train_segmentation_model {args.epochs} epochs on "
          f"{n_train} images (augmented, from disk; validation {n_val} images), predict the {n_train} ==")
    start = time.perf_counter()
    model = build(args, size)
    train_ds = make_segmentation_dataset(
        [i for i, _ in train], [m for _, m in train], size, bs,
        shuffle=True, augment_params=augmentation, seed=SEED,
    )
    val_ds = make_segmentation_dataset(
        [i for i, _ in val], [m for _, m in val], size, bs,
        shuffle=False, augment_params=None, seed=SEED,
    )
    built = time.perf_counter()
    epochs = EpochTimer()
    train_segmentation_model(
        model, train_ds, val_ds, {"epochs": args.epochs, "verbose": 0}, extra_callbacks=[epochs]
    )
    trained = time.perf_counter()
    predicted = 0
    for batch in make_inference_dataset([i for i, _ in train], size, bs):
        predicted += len(model.predict_on_batch(batch))
    done = time.perf_counter()
    epoch_list = ", ".join(f"{s:.1f}" for s in epochs.seconds)
    print(f"  build model + datasets: {built - start:6.1f} s")
    print(f"  train {args.epochs} epochs:         {trained - built:6.1f} s  (per epoch: {epoch_list} s; "
          f"the first includes graph tracing)")
    if len(epochs.seconds) > 1:
        later = statistics.mean(epochs.seconds[1:])
        print(f"    later epochs: {n_train / later:.2f} training img/s incl. validation of {n_val}")
    print(f"  predict {predicted} images:      {done - trained:6.1f} s  (streamed PNGs, batch {bs}, "
          f"incl. tracing: {predicted / (done - trained):.2f} img/s)")
    print(f"  TOTAL wall time:        {done - start:6.1f} s")


def thread_report() -> str:
    schedulable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()

    def show(value: int) -> str:  # 0 means TensorFlow's default: one thread per schedulable CPU
        return f"{value}" if value else f"auto = {schedulable}"

    return (f"intra-op {show(intra)}, inter-op {show(inter)} "
            f"(schedulable CPUs {schedulable}, os.cpu_count {os.cpu_count()})")


def main() -> None:
    args = parse_args()
    pairs = find_pairs(args.data)
    for name in ("image_size", "compare_size"):
        size = getattr(args, name)
        if size and size % 16:
            sys.exit(f"--{name.replace('_', '-')} must be a multiple of 16 (U-Net pools 4 times), got {size}")
    configure_device()  # as the training node: memory growth on GPUs, float32 policy
    augmentation = pipeline_augmentation()
    load_before = os.getloadavg()
    run_start = time.perf_counter()

    model = build(args, args.image_size)
    n_params = model.count_params()
    print("Segmentation benchmark" + (" (--quick smoke run)" if args.quick else ""))
    print(f"model: {args.model}, base_filters {args.base_filters}, {n_params:,} parameters "
          f"({n_params / 1e6:.2f} M; reference U-Net {REFERENCE_PARAMS / 1e6:.1f} M)")
    print(f"device: {describe_device()}; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"policy {keras.mixed_precision.global_policy().name}")
    print(f"TensorFlow CPU threads: {thread_report()}")
    print(f"data: {args.data} ({len(pairs)} image/mask pairs, 512x512 PNG); augmentation: "
          f"{'pipeline conf ' + ', '.join(sorted(augmentation)) if augmentation else 'library defaults'}")
    print(f"load average at start: {load_before[0]:.2f} (1 min). NOTE: timings are noisy on a "
          "machine whose cores are shared with other jobs; PNGs come from the OS page cache "
          "after the first read.")

    images = training_throughput(args, pairs, model, args.batches, augmentation)
    print(f"  (compiled with jit_compile={model.jit_compile}: XLA is "
          f"{'on' if model.jit_compile else 'off'}, as 'auto' resolves on this device)")

    print(f"\n== INFERENCE {args.image_size}x{args.image_size}, model.predict_on_batch, "
          "after 2 warm-up calls per batch size ==")
    reference = REFERENCE_INFER_IMG_S.get(args.image_size) if is_reference_model(args) else None
    for batch, repeats in ((1, 10 * args.predict_repeats), (32, args.predict_repeats)):
        rate = time_predict(model, images, batch, repeats)
        print(f"  batch {batch:2d}: {fmt_rate(rate)}{vs_reference(rate.per_second, reference)}")
    del model, images

    if args.compare_size and args.compare_size != args.image_size:
        # Smaller steps are quicker: time more of them (up to 4x) for a similar window.
        area_ratio = (args.image_size / args.compare_size) ** 2
        steps = math.ceil(args.batches * min(4.0, max(1.0, area_ratio)))
        training_throughput(args, pairs, build(args, args.compare_size), steps, augmentation)

    end_to_end(args, pairs, augmentation)

    load_after = os.getloadavg()
    print(f"\nTensorFlow CPU threads: {thread_report()}; OS threads in this process: "
          f"{len(os.listdir('/proc/self/task')) if os.path.isdir('/proc/self/task') else 'n/a'}")
    print(f"load average at end: {load_after[0]:.2f} (1 min); whole benchmark "
          f"{time.perf_counter() - run_start:.0f} s. Timings are noisy on shared cores: "
          "compare figures from the same run, and repeat a run before trusting a small difference.")


if __name__ == "__main__":
    main()
