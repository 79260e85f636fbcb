"""Benchmark: segmentation training and inference throughput on this machine.

Prints, for one model (default: the reference 7.8 M-parameter U-Net, base_filters 32):
  * the model and its parameter count, the device and TensorFlow's CPU threads;
  * TRAINING images/second (``model.fit``; Adam + bce_dice + Dice/IoU metrics, compiled as
    ``train_segmentation_model`` compiles) with
      - the real input pipeline: ``make_segmentation_dataset`` reading the PNGs from disk,
        decoding, resizing and augmenting them (the augmentation settings of
        conf/base/parameters/segmentation.yml), as the training node uses it, and
      - the same model fed the same images already decoded in memory
        (``make_in_memory_dataset``),
    same batch size, same run, and their ratio (the input-pipeline overhead), plus the
    input pipeline alone (no model). Each training figure is timed over a fixed number
    of steps AFTER warm-up steps of the same ``fit`` call, so graph tracing and pipeline
    start-up are excluded;
  * the same at a second, smaller size (default 128x128);
  * INFERENCE images/second with ``model.predict_on_batch`` at batch 1 and batch 32,
    after warm-up calls;
  * END-TO-END wall time of a small training job: build the model,
    ``train_segmentation_model`` for 2 epochs on N images (with a held-out validation set,
    as the pipeline does; graph tracing included), then predict the N images from disk
    (``make_inference_dataset``).

Shared cores: every timed window also reports the CPU time the process got ("cores":
CPU-seconds / wall-seconds, at most the number of CPUs) and the CPU-seconds per image.
When other jobs share the cores the wall-clock rates drop, but CPU-seconds per image
stay comparable, so the overhead ratio is also given from them.

The issue's reference figures (2 CPU cores, 7.8 M-parameter U-Net) are printed next to
the measured ones; they are only comparable for ``--model unet --base-filters 32``.
No asserts: this script only prints figures.

Usage:
    python benchmarks/segmentation.py [--data ../shared/data/cxr_segmentation/shenzhen]
        [--model unet] [--image-size 256] [--base-filters 32] [--n-images 64]
        [--batches 6] [--quick]

Default run: about 310 CPU-seconds; 6 minutes measured on 2 cores partly shared with other
jobs. ``--quick`` is a 64x64 smoke run of about 35 CPU-seconds (37 s wall on lightly
shared cores), mostly TensorFlow's import and graph tracing.
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # less TensorFlow start-up chatter

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from covid_imaging.segmentation.data import (  # noqa: E402
    make_in_memory_dataset,
    make_inference_dataset,
    make_segmentation_dataset,
)
from covid_imaging.segmentation.models import (  # noqa: E402
    MODEL_BUILDERS,
    build_segmentation_model,
)
from covid_imaging.segmentation.training import (  # noqa: E402
    DEFAULT_TRAINING_PARAMS,
    compile_segmentation_model,
    describe_device,
    set_global_seed,
    train_segmentation_model,
)
from covid_imaging.training import configure_gpus  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "cxr_segmentation" / "shenzhen"
SEGMENTATION_PARAMS = PROJECT_ROOT / "conf" / "base" / "parameters" / "segmentation.yml"
SEED = 42

# The figures: 2 CPU cores, 7.8 M-parameter U-Net (base_filters 32).
REFERENCE_PARAMS = 7.8e6
REFERENCE_TRAIN_IMG_S = {256: 2.5, 128: 9.5}
REFERENCE_INFER_IMG_S = {256: 8.5}

# option: (default, --quick default)
DEFAULTS: dict[str, tuple[int, int]] = {
    "image_size": (256, 64),
    "compare_size": (128, 0),
    "n_images": (64, 32),
    "batches": (6, 4),
    "warmup": (2, 1),
    "e2e_images": (32, 16),
    "epochs": (2, 2),
    "predict_repeats": (3, 2),
}


def n_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Rate:
    """Images processed in a timed window: wall and process CPU seconds, per-step wall times."""

    images: int
    seconds: float
    cpu_seconds: float
    step_seconds: list[float]
    warmup_seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.images / self.seconds

    @property
    def median_per_second(self) -> float:
        """Images/s from the median step: robust to a neighbour grabbing the cores briefly."""
        return self.images / len(self.step_seconds) / statistics.median(self.step_seconds)

    @property
    def cores(self) -> float:
        """CPU cores this process actually got on average (all its threads)."""
        return self.cpu_seconds / self.seconds

    @property
    def cpu_per_image(self) -> float:
        return self.cpu_seconds / self.images


class StepTimer(keras.callbacks.Callback):
    """Wall and process CPU time at the end of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[float, float]] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if logs and "loss" in logs:
            float(logs["loss"])  # wait for the step's result (matters on an asynchronous GPU)
        self.times.append((time.perf_counter(), time.process_time()))


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
                        help="folder with images/ and masks/ (PNG files with the same names)")
    parser.add_argument("--model", choices=sorted(MODEL_BUILDERS), default="unet")
    parser.add_argument("--base-filters", type=int, default=32,
                        help="32 = the reference 7.8 M-parameter U-Net (the CPU conf trains with 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch size (pipeline: 8)")
    parser.add_argument("--image-size", type=int, help="main input size (default 256; --quick 64)")
    parser.add_argument("--compare-size", type=int,
                        help="second training size (default 128; 0 skips it, as --quick does)")
    parser.add_argument("--n-images", type=int,
                        help="images the throughput runs cycle over (default 64; --quick 32)")
    parser.add_argument("--batches", type=int,
                        help="timed training steps per row at --image-size (default 6; --quick 4)")
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
    for name in ("image_size", "compare_size"):
        size = getattr(args, name)
        if size and (size < 0 or size % 16):
            parser.error(f"--{name.replace('_', '-')} must be a multiple of 16 (U-Net pools 4 times)")
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
    compile_segmentation_model(model, DEFAULT_TRAINING_PARAMS)


def build(args: argparse.Namespace, image_size: int) -> keras.Model:
    set_global_seed(SEED)
    return build_segmentation_model(args.model, input_size=image_size, base_filters=args.base_filters)


def streamed_dataset(pairs: list[tuple[str, str]], image_size: int, batch_size: int,
                     augmentation: dict | None, shuffle: bool = True) -> tf.data.Dataset:
    return make_segmentation_dataset(
        [i for i, _ in pairs], [m for _, m in pairs], image_size, batch_size,
        shuffle=shuffle, augment_params=augmentation, seed=SEED,
    )


def load_in_memory(pairs: list[tuple[str, str]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode + resize the pairs once with the library's own loaders (no augmentation)."""
    batches = [(x.numpy(), y.numpy()) for x, y in streamed_dataset(pairs, image_size, 32, None, False)]
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def time_fit(model: keras.Model, dataset: tf.data.Dataset, warmup: int, steps: int,
             batch_size: int) -> Rate:
    """One ``fit`` call of ``warmup + steps`` steps; only the last ``steps`` are timed."""
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, shuffle=False,
              callbacks=[timer], verbose=0)
    (wall0, cpu0), (wall1, cpu1) = timer.times[warmup - 1], timer.times[-1]
    walls = [wall for wall, _ in timer.times[warmup - 1:]]
    return Rate(steps * batch_size, wall1 - wall0, cpu1 - cpu0, list(np.diff(walls)), wall0 - start)


def time_input_pipeline(dataset: tf.data.Dataset, warmup: int, steps: int, batch_size: int) -> Rate:
    """Pull ``steps`` batches from the dataset alone (no model), after ``warmup`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    walls, wall0, cpu0 = [], time.perf_counter(), time.process_time()
    for _ in range(steps):
        step_start = time.perf_counter()
        next(iterator)
        walls.append(time.perf_counter() - step_start)
    return Rate(steps * batch_size, time.perf_counter() - wall0, time.process_time() - cpu0, walls)


def time_predict(model: keras.Model, images: np.ndarray, batch: int, repeats: int) -> Rate:
    """``predict_on_batch`` on the same ``batch`` images ``repeats`` times, after 2 warm-up calls."""
    x = tf.constant(images[np.arange(batch) % len(images)])
    for _ in range(2):
        model.predict_on_batch(x)  # tracing (a new batch size retraces) and first-call costs
    walls, cpu0 = [], time.process_time()
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)  # returns NumPy, so the result is really computed
        walls.append(time.perf_counter() - start)
    return Rate(batch * repeats, sum(walls), time.process_time() - cpu0, walls)


def fmt_rate(rate: Rate) -> str:
    return (f"{rate.per_second:7.2f} img/s (median step {rate.median_per_second:6.2f}; "
            f"{rate.images:3d} img in {rate.seconds:5.1f} s; {rate.cores:.2f} cores, "
            f"{rate.cpu_per_image:6.3f} CPU-s/img)")


def vs_reference(measured: float, reference: float | None) -> str:
    if reference is None:
        return ""
    return f"  [issue: {reference:.1f} img/s -> x{measured / reference:.2f}]"


def is_reference_model(args: argparse.Namespace) -> bool:
    return args.model == "unet" and args.base_filters == 32


def training_throughput(args: argparse.Namespace, pairs: list[tuple[str, str]], model: keras.Model,
                        steps: int, augmentation: dict, summary: list[str]) -> np.ndarray:
    """Print streamed-vs-in-memory training rates of ``model``; return the in-memory images."""
    bs = args.batch_size
    image_size = model.input_shape[1]
    pool = pairs[: max(bs, (min(args.n_images, len(pairs)) // bs) * bs)]  # whole batches only
    section_start = time.perf_counter()
    compile_like_pipeline(model)
    images, masks = load_in_memory(pool, image_size)
    streamed = streamed_dataset(pool, image_size, bs, augmentation).repeat()
    in_memory = make_in_memory_dataset(images, masks, bs).repeat()
    reference = REFERENCE_TRAIN_IMG_S.get(image_size) if is_reference_model(args) else None

    print(f"\n== TRAINING {image_size}x{image_size}, batch {bs}, model.fit: {args.warmup} warm-up + "
          f"{steps} timed steps ({steps * bs} images) per row, cycling over {len(pool)} images ==")
    alone = time_input_pipeline(streamed, args.warmup, steps, bs)
    print(f"  input pipeline alone, no model:      {fmt_rate(alone)}")
    stream_rate = time_fit(model, streamed, args.warmup, steps, bs)
    print(f"  fit, real input pipeline (disk+aug): {fmt_rate(stream_rate)}"
          f"{vs_reference(stream_rate.per_second, reference)}")
    memory_rate = time_fit(model, in_memory, args.warmup, steps, bs)
    print(f"  fit, in-memory tensors:              {fmt_rate(memory_rate)}")
    wall_ratio = memory_rate.per_second / stream_rate.per_second
    median_ratio = memory_rate.median_per_second / stream_rate.median_per_second
    cpu_ratio = stream_rate.cpu_per_image / memory_rate.cpu_per_image
    print(f"  untimed warm-up: {stream_rate.warmup_seconds:.1f} s (real pipeline, incl. graph tracing), "
          f"{memory_rate.warmup_seconds:.1f} s (in-memory)")
    print(f"  input-pipeline overhead (real pipeline vs in-memory): wall time x{wall_ratio:.2f} "
          f"(median steps x{median_ratio:.2f}), CPU-s per image x{cpu_ratio:.2f}; the pipeline "
          f"alone costs {100 * alone.cpu_per_image / memory_rate.cpu_per_image:.0f}% of an in-memory "
          f"training step's CPU (section {time.perf_counter() - section_start:.0f} s)")
    summary.append(f"training {image_size}x{image_size}, real pipeline: {stream_rate.per_second:6.2f} img/s "
                   f"on {stream_rate.cores:.2f} cores{scaled(stream_rate)}{vs_reference(stream_rate.per_second, reference)}")
    summary.append(f"training {image_size}x{image_size}, in-memory:     {memory_rate.per_second:6.2f} img/s "
                   f"on {memory_rate.cores:.2f} cores{scaled(memory_rate)}")
    return images


def scaled(rate: Rate) -> str:
    """Rough rate had the process had every CPU to itself (assumes linear scaling)."""
    if rate.cores >= 0.9 * n_cpus():
        return ""
    return f" (~{rate.per_second * n_cpus() / rate.cores:.2f} at {n_cpus()} full cores, rough)"


def end_to_end(args: argparse.Namespace, pairs: list[tuple[str, str]], augmentation: dict,
               summary: list[str]) -> None:
    """Build, train ``epochs`` epochs on N images (+ validation), predict the N images."""
    n_train = min(args.e2e_images, len(pairs) - 1)
    n_val = max(1, min(n_train // 4, len(pairs) - n_train))
    train, val = pairs[-n_train:], pairs[:n_val]  # disjoint ends of the sorted list
    size, bs = args.image_size, args.batch_size
    print(f"\n== END-TO-END {size}x{size}: build, train_segmentation_model {args.epochs} epochs on "
          f"{n_train} images (augmented, from disk; validation {n_val} images), predict the {n_train} ==")
    start, cpu_start = time.perf_counter(), time.process_time()
    model = build(args, size)
    train_ds = streamed_dataset(train, size, bs, augmentation)
    val_ds = streamed_dataset(val, size, bs, None, shuffle=False)
    built = time.perf_counter()
    epochs = EpochTimer()
    train_segmentation_model(
        model, train_ds, val_ds, {"epochs": args.epochs, "verbose": 0}, extra_callbacks=[epochs]
    )
    trained = time.perf_counter()
    predicted = 0
    for batch in make_inference_dataset([i for i, _ in train], size, bs):
        predicted += len(model.predict_on_batch(batch))
    done, cpu_done = time.perf_counter(), time.process_time()
    epoch_list = ", ".join(f"{s:.1f}" for s in epochs.seconds)
    print(f"  build model + datasets: {built - start:6.1f} s")
    print(f"  train {args.epochs} epochs:         {trained - built:6.1f} s  (per epoch: {epoch_list} s; "
          "the first includes graph tracing)")
    if len(epochs.seconds) > 1:
        later = statistics.mean(epochs.seconds[1:])
        print(f"    after the first epoch: {n_train / later:.2f} training img/s, validation included")
    print(f"  predict {predicted} images:      {done - trained:6.1f} s  (PNGs from disk, batch {bs}, "
          f"tracing included: {predicted / (done - trained):.2f} img/s)")
    total = done - start
    print(f"  TOTAL wall time:        {total:6.1f} s  ({(cpu_done - cpu_start) / total:.2f} cores on average)")
    summary.append(f"end-to-end {args.epochs} epochs x {n_train} images + predict, {size}x{size}: "
                   f"{total:.0f} s wall")


def thread_report() -> str:
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()

    def show(value: int) -> str:  # 0 = TensorFlow's default: one thread per schedulable CPU
        return f"{value}" if value else f"0 = auto = {n_cpus()}"

    return (f"intra-op {show(intra)}, inter-op {show(inter)} "
            f"(schedulable CPUs {n_cpus()}, os.cpu_count {os.cpu_count()})")


def main() -> None:
    args = parse_args()
    pairs = find_pairs(args.data)
    configure_gpus()  # as the training node: memory growth on GPUs (float32: the default policy)
    augmentation = pipeline_augmentation()
    load_start = os.getloadavg()[0]
    run_start, cpu_start = time.perf_counter(), time.process_time()
    summary: list[str] = []

    model = build(args, args.image_size)
    n_params = model.count_params()
    print("Segmentation benchmark" + (" (--quick smoke run)" if args.quick else ""))
    print(f"model: {args.model}, base_filters {args.base_filters}, {n_params:,} parameters "
          f"({n_params / 1e6:.2f} M; the issue's reference U-Net: {REFERENCE_PARAMS / 1e6:.1f} M)")
    print(f"device: {describe_device()}; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"dtype policy {keras.mixed_precision.global_policy().name}")
    print(f"TensorFlow CPU threads: {thread_report()}")
    print(f"data: {args.data} ({len(pairs)} image/mask pairs); augmentation: "
          f"{'pipeline conf (' + ', '.join(sorted(augmentation)) + ')' if augmentation else 'library defaults'}")
    print(f"load average at start: {load_start:.2f} on {n_cpus()} CPUs. NOTE: wall-clock timings are "
          "noisy when the cores are shared with other jobs (see 'cores' = CPU time this process got); "
          "PNGs come from the OS page cache after their first read.")

    images = training_throughput(args, pairs, model, args.batches, augmentation, summary)
    print(f"  (jit_compile={model.jit_compile}: 'auto' turns XLA {'on' if model.jit_compile else 'off'} "
          "on this device)")

    print(f"\n== INFERENCE {args.image_size}x{args.image_size}, model.predict_on_batch on in-memory "
          "images, after 2 warm-up calls per batch size ==")
    reference = REFERENCE_INFER_IMG_S.get(args.image_size) if is_reference_model(args) else None
    for batch, repeats in ((1, 10 * args.predict_repeats), (32, args.predict_repeats)):
        rate = time_predict(model, images, batch, repeats)
        print(f"  batch {batch:2d}: {fmt_rate(rate)}{vs_reference(rate.per_second, reference)}")
        summary.append(f"inference {args.image_size}x{args.image_size}, batch {batch:2d}:    "
                       f"{rate.per_second:6.2f} img/s on {rate.cores:.2f} cores{scaled(rate)}"
                       f"{vs_reference(rate.per_second, reference)}")
    del model, images

    if args.compare_size and args.compare_size != args.image_size:
        # Smaller steps are quicker: time up to twice as many for a similar window.
        area_ratio = (args.image_size / args.compare_size) ** 2
        steps = math.ceil(args.batches * min(2.0, max(1.0, area_ratio)))
        training_throughput(args, pairs, build(args, args.compare_size), steps, augmentation, summary)

    end_to_end(args, pairs, augmentation, summary)

    wall, cpu = time.perf_counter() - run_start, time.process_time() - cpu_start
    print("\n== SUMMARY (device: " + describe_device() + f", {n_cpus()} CPUs) ==")
    for line in summary:
        print("  " + line)
    print(f"  TensorFlow CPU threads: {thread_report()}; OS threads in this process now: "
          f"{len(os.listdir('/proc/self/task')) if os.path.isdir('/proc/self/task') else 'n/a'}")
    print(f"  whole benchmark: {wall:.0f} s wall, {cpu:.0f} CPU-s ({cpu / wall:.2f} cores on average); "
          f"load average {load_start:.2f} at start, {os.getloadavg()[0]:.2f} at end.")
    print("  Wall-clock figures depend on what else runs on the cores: compare rows of the same run, "
          "and repeat a run before trusting a small difference.")


if __name__ == "__main__":
    main()
