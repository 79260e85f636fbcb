"""Benchmark: preprocessing on 1 thread, all local cores and a Dask LocalCluster, against the limit.

``speed`` (default): N images (default 5,000) through the preprocessing node and the
catalog's ``SwappedPartitionedDataset`` (read → decode → chain → PNG encode → atomic
write, swapped in whole), with the ``compute`` backend set to one thread, all local
cores, and ``LocalCluster(2)``, in several rounds (the thread rounds first, then the
LocalCluster rounds, so no thread run follows a cluster in the same process). Each rate is printed with its ratio to
the limit measured in the same round, just before and just after its runs (the higher
of the two): bare OpenCV decode + the same chain + PNG encode of the same files already
in memory, on all cores (threads; no file I/O, no Kedro). The median ratio over the
rounds is the figure; the spread shows how much the machine drifted.

``scale``: N images (default 34,000) through ingestion (list, decode, hash, validate)
and preprocessing, with wall time and peak resident memory of this process (the
LocalCluster is not used there).

The images are the shared data set's (``../shared/data``, masks excluded), replicated
into a temporary folder under new names; each copy gets a one-line PNG ``tEXt`` chunk
or JPEG comment with its number, so every file has its own content hash (ingestion
rejects exact duplicates) and the same pixels. Nothing is written into the repository.

Usage:
    python benchmarks/scaling.py [--n-images 5000] [--rounds 3] [--data ../shared/data]
    python benchmarks/scaling.py scale [--n-images 34000]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import struct
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from kedro_datasets.partitions import PartitionedDataset

from covid_imaging.compute import close_dask_clients, local_cores
from covid_imaging.datasets.swapped_partitions import SwappedPartitionedDataset
from covid_imaging.imaging.io import decode_gray
from covid_imaging.imaging.preprocessing import PreprocessingConfig, preprocess_gray
from covid_imaging.pipelines.ingestion.nodes import build_manifest
from covid_imaging.pipelines.preprocessing.nodes import preprocess_images

BYTES_DATASET = "covid_imaging.datasets.bytes_dataset.BytesDataset"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tagged(data: bytes, number: int) -> bytes:
    """The same image with its copy number in a metadata chunk (another hash, same pixels)."""
    text = f"copy {number}".encode()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        chunk = b"tEXt" + b"Comment\x00" + text
        packed = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk))
        return data[:33] + packed + data[33:]  # after the signature and IHDR
    if data.startswith(b"\xff\xd8"):
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    raise ValueError("expected PNG or JPEG")


def replicate(data: Path, n_images: int, folder: Path) -> list[Path]:
    """``n_images`` files under ``folder/<label>/``, cycling through the shared images."""
    manifest = pd.read_csv(data / "manifest.csv", keep_default_na=False)
    sources = [(data / row.path, row.label) for row in manifest.itertuples()]
    written = []
    for number in range(n_images):
        path, label = sources[number % len(sources)]
        target = folder / label / f"copy{number:06d}_{path.stem}{path.suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tagged(path.read_bytes(), number))
        written.append(target)
    return written


def bare_limit(blobs: list[bytes], config: PreprocessingConfig, workers: int) -> float:
    """images/s of OpenCV decode + the chain + PNG encode on ``workers`` threads (bytes in memory)."""

    def one(blob: bytes) -> int:
        gray = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)
        return len(cv2.imencode(".png", preprocess_gray(gray, config))[1])

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(one, blobs, chunksize=16):
            pass
    return len(blobs) / (time.perf_counter() - start)


def run_step(raw: Path, out: Path, compute: dict, params: dict) -> tuple[float, int]:
    files = PartitionedDataset(path=str(raw), dataset=BYTES_DATASET).load()
    manifest = pd.DataFrame({"image_id": [Path(k).name for k in files], "image_key": list(files), "mask_key": ""})
    dataset = SwappedPartitionedDataset(path=str(out), dataset=BYTES_DATASET, filename_suffix=".png", overwrite=True)
    start = time.perf_counter()
    dataset.save(preprocess_images(manifest, files, params, compute))
    return time.perf_counter() - start, len(manifest)


def speed(args: argparse.Namespace, params: dict) -> None:
    config = PreprocessingConfig.from_params(params)
    cores = local_cores()
    computes = {
        "1 thread": {"backend": "threads", "n_workers": 1},
        f"all cores ({cores} threads)": {"backend": "threads"},
        "LocalCluster(2)": {"dask": {"scheduler_address": "local", "n_workers": 2}},
    }
    with tempfile.TemporaryDirectory(prefix="scaling_") as folder:
        raw, out = Path(folder) / "raw", Path(folder) / "out"
        paths = replicate(args.data, args.n_images, raw)
        blobs = [p.read_bytes() for p in paths]
        megapixels = np.mean([decode_gray(b).size for b in blobs[: min(len(blobs), 500)]]) / 1e6
        print(f"{len(paths)} images replicated from {args.data} (mean {megapixels:.2f} MP), output "
              f"{config.image_size}x{config.image_size}, the default chain; {cores} local cores; "
              f"{args.rounds} rounds")
        # The machine's speed drifts (shared cores, CPU boost): each round measures the limit
        # just before and just after its runs, and each run's ratio uses the higher of the two.
        # The LocalCluster rounds come after all thread rounds: in one process, thread runs
        # that followed a LocalCluster run were 3-9 % slower (3 pairs), which no user's run sees.
        rates: dict[str, list[float]] = {label: [] for label in computes}
        ratios: dict[str, list[float]] = {label: [] for label in computes}
        limits, one_thread_limits = [], []
        thread_computes = {label: c for label, c in computes.items() if "dask" not in c}
        dask_computes = {label: c for label, c in computes.items() if "dask" in c}
        limit = bare_limit(blobs, config, cores)
        for phase in (thread_computes, dask_computes):
            for _ in range(args.rounds):
                if phase is thread_computes:
                    one_thread_limits.append(bare_limit(blobs, config, 1))
                round_rates = {}
                for label, compute in phase.items():
                    if "dask" in compute:  # start the cluster before the clock, as a running cluster would be
                        from covid_imaging.compute import (  # noqa: PLC0415
                            ComputeConfig,
                            dask_client,
                        )

                        dask_client(ComputeConfig.from_params(compute))
                    seconds, n = run_step(raw, out, compute, params)
                    round_rates[label] = n / seconds
                    shutil.rmtree(out, ignore_errors=True)
                close_dask_clients()
                next_limit = bare_limit(blobs, config, cores)
                round_limit = max(limit, next_limit)
                limits.append(round_limit)
                for label, rate in round_rates.items():
                    rates[label].append(rate)
                    ratios[label].append(rate / round_limit)
                if phase is thread_computes:
                    one_thread_limits[-1] /= round_limit
                limit = next_limit
    print(f"limit, bare decode+chain+encode, all cores, per round: "
          f"{', '.join(f'{value:.1f}' for value in limits)} images/s")
    print("| compute | images/s per round | ratio to the round's all-core limit (median; per round) |")
    print("|---|---|---|")
    for label in computes:
        print(f"| {label} | {', '.join(f'{rate:.1f}' for rate in rates[label])} | "
              f"{np.median(ratios[label]):.2f} ({', '.join(f'{ratio:.2f}' for ratio in ratios[label])}) |")
    print(f"| (bare limit, one thread) | | {np.median(one_thread_limits):.2f} "
          f"({', '.join(f'{ratio:.2f}' for ratio in one_thread_limits)}) |")


def scale(args: argparse.Namespace, params: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="scaling_") as folder:
        raw, out = Path(folder) / "raw", Path(folder) / "out"
        start = time.perf_counter()
        replicate(args.data, args.n_images, raw)
        print(f"replicated {args.n_images} images in {time.perf_counter() - start:.0f} s")
        baseline = peak_rss_mib()
        start = time.perf_counter()
        files = PartitionedDataset(path=str(raw), dataset=BYTES_DATASET).load()
        manifest, rejected = build_manifest(files, {"layout": "class_folders", "raw_location": str(raw),
                                                    "task": "classification", "source": "replicated"})
        ingestion_s = time.perf_counter() - start
        print(f"ingestion: {len(manifest)} accepted, {len(rejected)} report rows, {ingestion_s:.0f} s "
              f"({len(files) / ingestion_s:.1f} files/s)")
        dataset = SwappedPartitionedDataset(path=str(out), dataset=BYTES_DATASET, filename_suffix=".png", overwrite=True)
        start = time.perf_counter()
        dataset.save(preprocess_images(manifest, files, params, {"backend": "threads"}))
        preprocessing_s = time.perf_counter() - start
        written = sum(1 for _ in out.rglob("*.png"))
        print(f"preprocessing: {written} PNGs, {preprocessing_s:.0f} s ({written / preprocessing_s:.1f} images/s)")
        print(f"total {ingestion_s + preprocessing_s:.0f} s wall; peak RSS {peak_rss_mib():.0f} MiB "
              f"(before the stages {baseline:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("speed", "scale"), default="speed")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--n-images", type=int, default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3, help="speed: rounds of (limit, the two thread runs, limit), then of (LocalCluster run, limit)")
    args = parser.parse_args()
    if not (args.data / "manifest.csv").exists():
        sys.exit(f"no manifest.csv under {args.data}")
    args.n_images = args.n_images or (5000 if args.mode == "speed" else 34000)
    params = {"resize": {"size": args.size}}  # the default chain (conf/base/parameters/preprocessing.yml)
    (speed if args.mode == "speed" else scale)(args, params)


if __name__ == "__main__":
    main()
