"""Benchmark: the preprocessing step vs the bare OpenCV chain, and its peak memory.

Prints images/second of
  * the bare chain (resize → blur → gradient ×2 → CLAHE → normalise) on images already
    decoded in memory, and
  * the project's preprocessing step (read bytes → decode → chain → PNG encode → atomic
    write, through the node and Kedro's PartitionedDataset lazy saving), on the same
    images in the same run;
and the peak resident-memory growth while the step streams N images (default 5,000),
which stays flat as N grows because outputs are produced one at a time.

Usage: python benchmarks/preprocessing.py [--data ../shared/data] [--n-images 5000] [--size 256]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.imaging.io import decode_gray
from covid_imaging.imaging.preprocessing import PreprocessingConfig, preprocess_gray
from covid_imaging.pipelines.preprocessing.nodes import preprocess_images

REFERENCE_CHAIN = {
    "resize": {"size": 256, "interpolation": "area", "mode": "stretch"},  # the reference squashes
    "gaussian_blur": {"enabled": True, "kernel_size": 3},
    "morphological_gradient": {"enabled": True, "kernel_size": 3, "iterations": 2},
    "clahe": {"enabled": True, "clip_limit": 2.0, "tile_grid_size": 8},
    "normalisation": "minmax",
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_chain(gray: np.ndarray, size: int) -> np.ndarray:
    image = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    image = cv2.morphologyEx(image, cv2.MORPH_GRADIENT, kernel, iterations=2)
    image = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image)
    return cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n-images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--timing-images", type=int, default=300)
    args = parser.parse_args()
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg") and "/masks/" not in str(p))
    if not files:
        sys.exit(f"no images under {args.data}")
    params = {**REFERENCE_CHAIN, "resize": {**REFERENCE_CHAIN["resize"], "size": args.size}}
    config = PreprocessingConfig.from_params(params)

    def run_step(n_images: int, out: Path) -> float:
        raw_files = {f"img{i:06d}.bin": files[(i * 7919) % len(files)].read_bytes for i in range(n_images)}
        manifest = pd.DataFrame({"image_id": [f"img{i:06d}" for i in range(n_images)], "image_key": list(raw_files), "mask_key": ""})
        dataset = PartitionedDataset(path=str(out), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset", filename_suffix=".png")
        start = time.perf_counter()
        dataset.save(preprocess_images(manifest, raw_files, params))
        return time.perf_counter() - start

    # 1. peak memory while streaming N images
    baseline = peak_rss_mib()
    with tempfile.TemporaryDirectory() as folder:
        seconds = run_step(args.n_images, Path(folder) / "stream")
        written = sum(1 for _ in (Path(folder) / "stream").rglob("*.png"))
    growth = peak_rss_mib() - baseline
    print(f"streamed {written} images in {seconds:.1f} s ({written / seconds:.1f} images/s); "
          f"peak RSS {peak_rss_mib():.0f} MiB, growth during the step {growth:.0f} MiB")


    # 2. bare chain vs the step, same images, same run
    sample = [files[(i * 7919) % len(files)] for i in range(args.timing_images)]  # spread over all sources
    raw_bytes = [p.read_bytes() for p in sample]
    decoded = [decode_gray(b) for b in raw_bytes]
    assert np.array_equal(bare_chain(decoded[0], args.size), preprocess_gray(decoded[0], config))
    megapixels = np.mean([g.size for g in decoded]) / 1e6
    start = time.perf_counter()
    for gray in decoded:
        bare_chain(gray, args.size)
    bare_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder:
        step_seconds = run_step(args.timing_images, Path(folder) / "timing")
    n = args.timing_images
    print(f"images: {n} from {args.data} (mean {megapixels:.2f} MP), output {args.size}x{args.size}, reference chain")
    print(f"bare OpenCV chain (decoded in memory): {n / bare_seconds:8.1f} images/s  ({1000 * bare_seconds / n:.2f} ms/image)")
    print(f"preprocessing step (read+decode+chain+encode+write): {n / step_seconds:8.1f} images/s  ({1000 * step_seconds / n:.2f} ms/image)")
    print(f"step / bare time ratio: {step_seconds / bare_seconds:.1f}x")

    # 1024x1024 figure comparable with the 5 ms reference
    big = cv2.resize(decoded[0], (1024, 1024))
    start = time.perf_counter()
    for _ in range(50):
        bare_chain(big, args.size)
    print(f"bare chain on a 1024x1024 image: {1000 * (time.perf_counter() - start) / 50:.2f} ms/image")


if __name__ == "__main__":
    main()
