"""Time raw-image ingestion from Azure Blob Storage (Azurite), cold and with a warm cache.

"Ingest" = list the prefix + download what is missing + read every file's bytes (ready
to decode), i.e. ``CachedBlobImageDataset.load()`` and calling every loader. The local
``PartitionedDataset`` over the same folder is timed as the reference.

Usage (needs ``bash .ci/install_azurite.sh`` first)::

    python benchmarks/azure_ingest.py [--max-workers 8] [--repeat 3] [--n-per-class 40]

The default set matches the demo data set's size (conf/base/parameters/demo_data.yml).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from covid_imaging.azure.azurite import AzuriteServer
from covid_imaging.azure.credentials import credentials_from_mapping
from covid_imaging.azure.dataset import CachedBlobImageDataset
from covid_imaging.azure.upload import upload_folder


def write_demo_set(root: Path, n_per_class: int, n_ct_per_class: int, size: int) -> int:
    """Write a demo-sized set to ``root``; the project's synthetic generator when it is
    available, else random PNGs with the same layout, count and size."""
    try:
        from covid_imaging.demo.synthetic import generate_demo_dataset

        files = generate_demo_dataset(
            n_per_class=n_per_class,
            cxr_size=size,
            n_ct_per_class=n_ct_per_class,
            ct_size=size,
            seed=42,
        )
    except (ImportError, TypeError):
        import cv2
        import numpy as np

        rng = np.random.default_rng(42)
        files = {}
        for label in ("normal", "covid", "bacterial", "viral"):
            for i in range(n_per_class):
                for kind in ("images", "masks"):
                    pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                    files[f"cxr/{label}/{kind}/x{i:04d}.png"] = cv2.imencode(".png", pixels)[
                        1
                    ].tobytes()
        for label in ("covid", "non_covid"):
            for i in range(n_ct_per_class):
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
                files[f"ct/{label}/s{i:04d}.png"] = cv2.imencode(".png", pixels)[1].tobytes()
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return len(files)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-per-class", type=int, default=40)
    parser.add_argument("--n-ct-per-class", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="azure-ingest-bench-"))
    try:
        folder = work / "raw"
        n_files = write_demo_set(folder, args.n_per_class, args.n_ct_per_class, args.size)
        total_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
        with AzuriteServer(workspace=work / "azurite") as azurite:
            creds = credentials_from_mapping(
                {"connection_string": azurite.connection_string}, "benchmark"
            )
            creds.service_client().create_container("bench")
            upload_s = timed(
                lambda: upload_folder(
                    folder, "bench", "raw/demo", creds, max_workers=args.max_workers
                )
            )

            def ingest(cache: Path) -> CachedBlobImageDataset:
                dataset = CachedBlobImageDataset(
                    container="bench",
                    prefix="raw/demo",
                    credentials={"connection_string": azurite.connection_string},
                    cache_dir=str(cache),
                    max_workers=args.max_workers,
                )
                assert sum(len(load()) for load in dataset.load().values()) > 0
                return dataset

            cold, warm = [], []
            for run in range(args.repeat):
                cache = work / f"cache{run}"
                cold.append(timed(lambda c=cache: ingest(c)))
                warm.append(timed(lambda c=cache: ingest(c)))
            check = ingest(work / "cache0")
            assert check.last_load_stats.downloaded == 0, "warm cache downloaded again"

            from kedro_datasets.partitions import PartitionedDataset

            def local() -> None:
                ds = PartitionedDataset(
                    path=str(folder), dataset="covid_imaging.datasets.bytes_dataset.BytesDataset"
                )
                assert sum(len(load()) for load in ds.load().values()) > 0

            local_s = [timed(local) for _ in range(args.repeat)]

        print(
            f"data set: {n_files} files, {total_mb:.1f} MB ({args.size}px PNG); Azurite 3.37 on 127.0.0.1; "
            f"max_workers={args.max_workers}; median of {args.repeat}"
        )
        print(f"  upload (first, all files)        {upload_s:7.2f} s")
        print(
            f"  ingest cold (list+download+read) {statistics.median(cold):7.2f} s   runs: {', '.join(f'{t:.2f}' for t in cold)}"
        )
        print(
            f"  ingest warm (list+read cache)    {statistics.median(warm):7.2f} s   runs: {', '.join(f'{t:.2f}' for t in warm)}"
        )
        print(f"  local PartitionedDataset (read)  {statistics.median(local_s):7.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
