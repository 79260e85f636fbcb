"""Benchmark: whole inference on new images vs bare ``model.predict``, and its memory.

Prints, for the CPU-default lung U-Net (128 px input, base filters 16; untrained weights:
the arithmetic is the same as a trained model's, but post-processing runs on a noisier
map, so these are figures of the code path, not of a trained model's masks):

* WHOLE inference images/s at batch 1 and at batch 32: what ``kedro run
  --pipeline=inference`` does per image after listing (read the file → decode →
  preprocess → predict → probability map back to the native size and post-processed
  there → statistics and QC flags → encode the mask PNG and the overlay PNG → write them
  into an atomic run folder), with ``predictions.csv`` and the HTML report; and the same
  plus ingestion's validation pass (``build_manifest`` decodes every file once more to
  check it), which the pipeline also runs;
* BARE ``model.predict_on_batch`` images/s on the same preprocessed batches, already in
  memory, after a warm-up call;
* their ratio (the issue's goal: whole >= 0.8 x bare), in wall time and in CPU time
  (shared cores: CPU-seconds per image stay comparable when other jobs run);
* MEMORY: the peak of traced Python/NumPy allocations (tracemalloc) of the whole
  inference for N/2 and for N images, and the process's peak RSS. Bounded by a batch
  means the traced peak does not grow with N.

Images: N synthetic radiographs (``covid_imaging.demo.synthetic``, NOT medical data) of
``--native-size`` px, written as PNG files to a temporary folder first. No classifier
and no Grad-CAM (``--classifier`` adds an untrained simple CNN on the lung crop).

Usage:
    python benchmarks/inference.py [--n-images 200] [--native-size 1024] [--batch-sizes 1 32]
    python benchmarks/inference.py --n-images 5000        # the issue's memory run (long)
    python benchmarks/inference.py --n-images 5000 --native-size 256 --batch-sizes 32 --skip-speed
No asserts: this script only prints figures. The default run (200 images at 1024 px)
took 253 CPU-seconds (190 s wall on 2 cores at commit 9046aaf).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from covid_imaging.datasets.run_folder import RunFolderDataset  # noqa: E402
from covid_imaging.demo.synthetic import synthetic_chest_xray  # noqa: E402
from covid_imaging.inference.engine import (  # noqa: E402
    InferenceEngine,
    InferenceModels,
    InferenceSettings,
)
from covid_imaging.inference.models import LoadedModel  # noqa: E402
from covid_imaging.pipelines.inference.nodes import (  # noqa: E402
    SpooledRun,
    ingestion_params,
    resolve_inference_params,
    run_folder_contents,
)
from covid_imaging.pipelines.ingestion.nodes import REJECTED_COLUMNS, build_manifest  # noqa: E402
from covid_imaging.registry import load_registry  # noqa: E402


def _parameters() -> dict:
    """The project's parameters (base + local), read by Kedro's loader as ``kedro run`` reads them."""
    from kedro.config import OmegaConfigLoader  # noqa: PLC0415

    from covid_imaging.settings import CONFIG_LOADER_ARGS  # noqa: PLC0415

    return OmegaConfigLoader(conf_source=str(ROOT / "conf"), **CONFIG_LOADER_ARGS)["parameters"]


def _write_images(folder: Path, n: int, size: int) -> dict:
    rng = np.random.default_rng(0)
    for index in range(n):
        image, _ = synthetic_chest_xray(rng, size, ("normal", "covid", "bacterial", "viral")[index % 4])
        cv2.imwrite(str(folder / f"img_{index:05d}.png"), image)
    return {p.name: (lambda p=p: p.read_bytes()) for p in sorted(folder.glob("*.png"))}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _models(parameters: dict, with_classifier: bool) -> InferenceModels:
    import keras  # noqa: PLC0415

    from covid_imaging.classification.models import build_classifier  # noqa: PLC0415
    from covid_imaging.segmentation.models import (  # noqa: PLC0415
        architecture_options,
        build_segmentation_model,
    )

    keras.utils.set_random_seed(0)
    registry = load_registry()
    unet = parameters["segmentation"]["unet"]
    options = architecture_options(unet["model"])
    segmentation = build_segmentation_model("unet", input_size=int(unet["data"]["image_size"]), **options)
    classifiers = ()
    if with_classifier:
        spec = registry.get("cxr_classification", "simple_cnn_scratch")
        classifiers = (LoadedModel(spec, build_classifier("simple_cnn", n_classes=3, input_size=spec.input_size), "untrained"),)
    return InferenceModels(LoadedModel(registry.get("segmentation", "unet"), segmentation, "untrained"), classifiers)


def _engine(models: InferenceModels, parameters: dict, gradcam: bool) -> InferenceEngine:
    inference = resolve_inference_params(parameters["inference"])
    settings = InferenceSettings(
        preprocessing=parameters["preprocessing"],
        segmentation_postprocessing=parameters["segmentation"]["unet"]["postprocessing"],
        lung_masking=parameters["lung_masking"], qc=inference["qc"], gradcam=gradcam,
    )
    return InferenceEngine(models, settings)


def _whole(engine, raw_files, batch_size: int, out: Path, validate: bool) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of listing + predicting + writing one run folder (tables and report)."""
    wall, cpu = time.perf_counter(), _cpu()
    params = resolve_inference_params({"source": "bench", "ingestion": {"n_workers": 2}})
    if validate:
        manifest, _ = build_manifest(raw_files, ingestion_params(params))
    else:  # the manifest rows alone, without ingestion's decoding pass
        manifest = _manifest_rows(raw_files)
    run = SpooledRun(manifest, raw_files, engine, batch_size)
    RunFolderDataset(str(out)).save(run_folder_contents(run, pd.DataFrame(columns=REJECTED_COLUMNS), engine.models, params))
    return time.perf_counter() - wall, _cpu() - cpu, run.n_images


def _manifest_rows(raw_files) -> object:

    keys = sorted(raw_files)
    return pd.DataFrame({"image_id": [k.rsplit(".", 1)[0] for k in keys], "image_key": keys, "image_uri": keys,
                         "task": "cxr", "source": "bench", "label": "unlabelled", "mask_key": "", "width": 0, "height": 0})


def _bare(model, raw_files, engine, batch_size: int) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of ``predict_on_batch`` alone on the same preprocessed batches."""
    from covid_imaging.imaging.io import decode_gray  # noqa: PLC0415
    from covid_imaging.imaging.preprocessing import preprocess_gray  # noqa: PLC0415
    from covid_imaging.training.inputs import resize_to_model_input  # noqa: PLC0415

    size = int(model.input_shape[1])
    images = [resize_to_model_input(preprocess_gray(decode_gray(load()), engine.config)[..., None], size).numpy()
              for load in raw_files.values()]  # the model input the engine makes
    batches = [np.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    model.predict_on_batch(batches[0])  # warm-up (graph tracing)
    wall, cpu = time.perf_counter(), _cpu()
    for batch in batches:
        model.predict_on_batch(batch)
    return time.perf_counter() - wall, _cpu() - cpu, len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=200)
    parser.add_argument("--native-size", type=int, default=1024)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--classifier", action="store_true", help="add an untrained simple CNN with Grad-CAM")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true", help="only the memory runs (N/2 and N images)")
    arguments = parser.parse_args()

    parameters = _parameters()
    models = _models(parameters, arguments.classifier)
    engine = _engine(models, parameters, gradcam=arguments.classifier)
    print(f"cpus: {os.cpu_count()}  model: U-Net {models.segmentation.model.input_shape[1]} px, "
          f"{models.segmentation.model.count_params():,} parameters; classifier: {bool(arguments.classifier)}")
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as folder:
        source = Path(folder) / "images"
        source.mkdir()
        started = time.perf_counter()
        raw_files = _write_images(source, arguments.n_images, arguments.native_size)
        print(f"{arguments.n_images} synthetic {arguments.native_size}x{arguments.native_size} PNGs written "
              f"in {time.perf_counter() - started:.1f} s")
        # warm-up of the whole path (graph tracing, OpenCV/TF start-up), not timed
        _whole(engine, dict(list(raw_files.items())[:2]), 2, Path(folder) / "warm", validate=False)
        print("batch | bare predict img/s (CPU s/img) | whole img/s (CPU s/img) | whole+validation img/s | "
              "ratio whole/bare wall (CPU)")
        for batch_size in [] if arguments.skip_speed else arguments.batch_sizes:
            b_wall, b_cpu, n = _bare(models.segmentation.model, raw_files, engine, batch_size)
            w_wall, w_cpu, n_whole = _whole(engine, raw_files, batch_size, Path(folder) / f"out{batch_size}", False)
            v_wall, _, _ = _whole(engine, raw_files, batch_size, Path(folder) / f"val{batch_size}", True)
            assert n_whole == n
            print(f"{batch_size:5d} | {n / b_wall:8.1f} ({b_cpu / n:.4f}) | {n / w_wall:8.1f} ({w_cpu / n:.4f}) | "
                  f"{n / v_wall:8.1f} | {b_wall / w_wall:.2f} ({b_cpu / w_cpu:.2f})")
        if not arguments.skip_memory:
            batch_size = max(arguments.batch_sizes)
            for n in (arguments.n_images // 2, arguments.n_images):
                subset = dict(list(raw_files.items())[:n])
                tracemalloc.start()
                _whole(engine, subset, batch_size, Path(folder) / f"mem{n}", False)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(f"memory: {n} images at batch {batch_size}: traced peak {peak / 2**20:.1f} MiB")
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
