"""Tests of the synthetic demo data generator (fast: small images, few of them)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from covid_imaging.demo.synthetic import (
    CT_CLASSES,
    CXR_CLASSES,
    SYNTHETIC_NAME_PATTERN,
    generate_demo_dataset,
    synthetic_chest_xray,
    synthetic_ct_slice,
    synthetic_group_id,
)

SMALL = dict(
    n_per_class=24, cxr_size=112, n_ct_per_class=12, ct_size=112, seed=7, images_per_patient=2
)
TINY = dict(n_per_class=3, cxr_size=96, n_ct_per_class=3, ct_size=96, seed=11, images_per_patient=2)
PAIRED_SEEDS = range(12)
SIZE = 128


def _decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


def _digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for key in sorted(files):
        h.update(key.encode())
        h.update(files[key])
    return h.hexdigest()


@pytest.fixture(scope="module")
def dataset() -> dict[str, bytes]:
    return generate_demo_dataset(**SMALL)


@pytest.fixture(scope="module")
def cxr_pairs(dataset) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Decoded (image, mask) pairs per class."""
    out: dict[str, list] = defaultdict(list)
    for key, data in sorted(dataset.items()):
        if key.startswith("cxr/") and "/images/" in key:
            label = key.split("/")[1]
            out[label].append((_decode(data), _decode(dataset[key.replace("/images/", "/masks/")])))
    return out


def _lung_stats(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Mean intensity inside the lungs and |right - left| lung mean difference."""
    lungs = mask > 0
    half = image.shape[1] // 2
    right = image[:, :half][lungs[:, :half]].mean()
    left = image[:, half:][lungs[:, half:]].mean()
    return float(image[lungs].mean()), float(abs(right - left))


# ---- determinism ------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes():
    first = generate_demo_dataset(**TINY)
    again = generate_demo_dataset(**TINY)
    assert list(again) == list(first)
    assert _digest(again) == _digest(first)


def test_different_seed_gives_different_images():
    first = generate_demo_dataset(**TINY)
    other = generate_demo_dataset(**{**TINY, "seed": TINY["seed"] + 1})
    assert set(other) == set(first)
    pngs = [k for k in first if k.endswith(".png")]
    assert all(other[k] != first[k] for k in pngs)
    assert other["README_SYNTHETIC.txt"] != first["README_SYNTHETIC.txt"]  # records the seed


def test_public_generators_depend_only_on_rng_state():
    for label in CXR_CLASSES:
        a = synthetic_chest_xray(np.random.default_rng(5), SIZE, label)
        b = synthetic_chest_xray(np.random.default_rng(5), SIZE, label)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for label in CT_CLASSES:
        assert np.array_equal(
            synthetic_ct_slice(np.random.default_rng(5), SIZE, label),
            synthetic_ct_slice(np.random.default_rng(5), SIZE, label),
        )
    rng = np.random.default_rng(5)
    first, _ = synthetic_chest_xray(rng, SIZE, "normal")
    second, _ = synthetic_chest_xray(rng, SIZE, "normal")
    assert not np.array_equal(first, second)


def test_pixels_do_not_depend_on_cpu_simd_paths(tmp_path):
    """Same pixels with numpy's and OpenCV's vector code paths switched off.

    Stands in for "same bytes on every machine": the generator must not use SIMD code
    whose rounding differs between CPUs.
    """
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    npy_off = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    script = (
        "import hashlib, numpy as np\n"
        "from covid_imaging.demo.synthetic import synthetic_chest_xray, synthetic_ct_slice\n"
        "h = hashlib.sha256()\n"
        "for i, label in enumerate(['normal', 'covid', 'bacterial', 'viral']):\n"
        "    img, mask = synthetic_chest_xray(np.random.default_rng(i), 96, label)\n"
        "    h.update(img.tobytes()); h.update(mask.tobytes())\n"
        "for i, label in enumerate(['covid', 'non_covid']):\n"
        "    h.update(synthetic_ct_slice(np.random.default_rng(i), 96, label).tobytes())\n"
        "print(h.hexdigest())\n"
    )

    def run(extra_env: dict[str, str]) -> str:
        env = {**os.environ, **extra_env}
        src = str(Path(__file__).resolve().parents[2] / "src")
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        res = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert res.returncode == 0, res.stderr
        return res.stdout.strip().splitlines()[-1]

    reference = run({})
    plain = run(
        {
            "NPY_DISABLE_CPU_FEATURES": " ".join(npy_off),
            "OPENCV_CPU_DISABLE": "AVX512_SKX,AVX2,FMA3,AVX,POPCNT",
        }
    )
    assert plain == reference


# ---- layout and names ---------------------------------------------------------------------


def test_layout_and_counts(dataset):
    keys = set(dataset)
    assert "README_SYNTHETIC.txt" in keys
    counts = Counter()
    for key in keys - {"README_SYNTHETIC.txt"}:
        m = re.fullmatch(r"cxr/([a-z_]+)/(images|masks)/[^/]+\.png|ct/([a-z_]+)/[^/]+\.png", key)
        assert m, key
        if m[1]:
            assert m[1] in CXR_CLASSES
            counts[("cxr", m[1], m[2])] += 1
        else:
            assert m[3] in CT_CLASSES
            counts[("ct", m[3])] += 1
    for label in CXR_CLASSES:
        assert counts[("cxr", label, "images")] == SMALL["n_per_class"]
        assert counts[("cxr", label, "masks")] == SMALL["n_per_class"]
    for label in CT_CLASSES:
        assert counts[("ct", label)] == SMALL["n_ct_per_class"]
    # every image has a mask with the same name and vice versa
    images = {k.replace("/images/", "/") for k in keys if "/images/" in k}
    masks = {k.replace("/masks/", "/") for k in keys if "/masks/" in k}
    assert images == masks


def test_default_arguments_layout():
    files = generate_demo_dataset(n_per_class=1, n_ct_per_class=1, cxr_size=64, ct_size=64)
    assert sorted(files) == sorted(
        ["README_SYNTHETIC.txt"]
        + [f"cxr/{c}/{kind}/synthetic_cxr_p{i:04d}_1.png" for i, c in enumerate(CXR_CLASSES) for kind in ("images", "masks")]
        + [f"ct/{c}/synthetic_ct_s{i:04d}_1.png" for i, c in enumerate(CT_CLASSES)]
    )  # fmt: skip


def test_every_file_name_is_synthetic(dataset):
    for key in dataset:
        name = key.rsplit("/", 1)[-1]
        if key == "README_SYNTHETIC.txt":
            continue
        assert name.startswith("synthetic_"), key
        assert SYNTHETIC_NAME_PATTERN.match(name), key


@pytest.mark.parametrize("per", [2, 3])
def test_patients_share_the_configured_number_of_images(dataset, per):
    config = {**SMALL, "n_per_class": 7, "n_ct_per_class": 5, "cxr_size": 48, "ct_size": 48}
    config["images_per_patient"] = per
    if per != SMALL["images_per_patient"]:
        dataset = generate_demo_dataset(**config)
    else:
        config = SMALL
    groups: dict[str, list[str]] = defaultdict(list)
    labels: dict[str, set[str]] = defaultdict(set)
    for key in dataset:
        if key == "README_SYNTHETIC.txt" or "/masks/" in key:
            continue
        gid = synthetic_group_id(key)
        assert gid is not None
        groups[gid].append(key)
        labels[gid].add(key.split("/")[1])
    assert all(len(v) == 1 for v in labels.values()), "a group spans classes"
    for modality, n in (("cxr", config["n_per_class"]), ("ct", config["n_ct_per_class"])):
        classes = CXR_CLASSES if modality == "cxr" else CT_CLASSES
        for label in classes:
            sizes = sorted(
                (
                    len(v)
                    for g, v in groups.items()
                    if g.startswith(modality) and label in labels[g]
                ),
                reverse=True,
            )
            full, rest = divmod(n, per)
            assert sizes == [per] * full + ([rest] if rest else [])
    # indices count from 1 within each group
    for members in groups.values():
        idx = sorted(
            int(SYNTHETIC_NAME_PATTERN.match(k.rsplit("/", 1)[-1])["index"]) for k in members
        )
        assert idx == list(range(1, len(idx) + 1))


def test_group_id_helper():
    assert synthetic_group_id("cxr/covid/images/synthetic_cxr_p0007_1.png") == "cxr_p0007"
    assert synthetic_group_id("synthetic_ct_s0012_3.png") == "ct_s0012"
    assert synthetic_group_id("COVID-1.png") is None


def test_readme_says_synthetic(dataset):
    text = dataset["README_SYNTHETIC.txt"].decode()
    assert "SYNTHETIC" in text and "NOT MEDICAL DATA" in text
    assert f"seed         : {SMALL['seed']}" in text
    assert str(SMALL["n_per_class"]) in text and str(SMALL["cxr_size"]) in text


# ---- image content ------------------------------------------------------------------------


def test_images_and_masks_formats(dataset, cxr_pairs):
    for pairs in cxr_pairs.values():
        for image, mask in pairs:
            assert image.dtype == np.uint8 and image.shape == (SMALL["cxr_size"],) * 2
            assert mask.dtype == np.uint8 and mask.shape == image.shape
            assert set(np.unique(mask).tolist()) <= {0, 255}
    for key, data in dataset.items():
        if key.startswith("ct/"):
            img = _decode(data)
            assert img.dtype == np.uint8 and img.shape == (SMALL["ct_size"],) * 2


def test_public_generator_outputs():
    image, mask = synthetic_chest_xray(np.random.default_rng(0), 100, "covid")
    assert image.shape == mask.shape == (100, 100)
    assert image.dtype == mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) <= {0, 255}
    ct = synthetic_ct_slice(np.random.default_rng(0), 100, "non_covid")
    assert ct.shape == (100, 100) and ct.dtype == np.uint8
    with pytest.raises(ValueError):
        synthetic_chest_xray(np.random.default_rng(0), 100, "tuberculosis")
    with pytest.raises(ValueError):
        synthetic_ct_slice(np.random.default_rng(0), 100, "normal")


def test_lung_area_fraction_is_realistic(cxr_pairs):
    for pairs in cxr_pairs.values():
        for _, mask in pairs:
            frac = (mask > 0).mean()
            assert 0.05 <= frac <= 0.70
            # two lungs
            n_components, _ = cv2.connectedComponents((mask > 0).astype(np.uint8))
            assert n_components - 1 == 2


def test_lungs_darker_than_body_in_normal_images(cxr_pairs):
    for image, mask in cxr_pairs["normal"]:
        lungs = mask > 0
        ys, xs = np.nonzero(lungs)
        # the thorax around the lungs: mediastinum, heart, chest wall, diaphragm
        box = np.zeros_like(lungs)
        box[max(0, ys.min() - 5) : ys.max() + 15, max(0, xs.min() - 5) : xs.max() + 6] = True
        body = box & ~lungs
        assert image[lungs].mean() + 15 < image[body].mean()


def test_disease_makes_lungs_denser_paired():
    """Same anatomy and exposure, different label: the lungs get brighter."""
    stats = {label: [] for label in CXR_CLASSES}
    for seed in PAIRED_SEEDS:
        for label in CXR_CLASSES:
            stats[label].append(
                _lung_stats(*synthetic_chest_xray(np.random.default_rng(seed), SIZE, label))
            )
    normal = np.array(stats["normal"])
    for label in ("covid", "bacterial", "viral"):
        diff = np.array(stats[label])[:, 0] - normal[:, 0]
        assert (diff > 0).all(), (label, diff)
        assert diff.mean() > 4.0, (label, diff.mean())
    # lobar pneumonia is one-sided, covid is bilateral
    asym = {label: np.array(stats[label])[:, 1].mean() for label in CXR_CLASSES}
    assert asym["bacterial"] > 1.5 * asym["covid"], asym


def _lung_to_thorax_ratio(image: np.ndarray, mask: np.ndarray) -> float:
    """Lung brightness relative to the rest of the thorax (cancels the exposure)."""
    lungs = mask > 0
    ys, xs = np.nonzero(lungs)
    box = np.zeros_like(lungs)
    box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return float(image[lungs].mean() / image[box & ~lungs].mean())


def test_class_patterns_differ_in_dataset(cxr_pairs):
    """Across different synthetic patients, diseased lungs are denser and lobar
    pneumonia is the most asymmetric."""
    mean = {
        label: np.mean([_lung_to_thorax_ratio(img, m) for img, m in cxr_pairs[label]])
        for label in CXR_CLASSES
    }
    asym = {
        label: np.mean([_lung_stats(img, m)[1] for img, m in cxr_pairs[label]])
        for label in CXR_CLASSES
    }
    for label in ("covid", "bacterial", "viral"):
        assert mean[label] > mean["normal"], mean
    assert asym["bacterial"] > asym["covid"], asym


def _ct_lung_region(image: np.ndarray) -> np.ndarray:
    """Dark pixels that are not connected to the border (outside air) = the lungs."""
    dark = (image < 110).astype(np.uint8)
    _, labels = cv2.connectedComponents(dark)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return (dark > 0) & ~np.isin(labels, border)


def test_ct_covid_lungs_are_brighter():
    diffs = []
    for seed in PAIRED_SEEDS:
        clear = synthetic_ct_slice(np.random.default_rng(seed), SIZE, "non_covid")
        covid = synthetic_ct_slice(np.random.default_rng(seed), SIZE, "covid")
        lungs = _ct_lung_region(clear)
        assert 0.05 < lungs.mean() < 0.6
        diffs.append(covid[lungs].mean() - clear[lungs].mean())
    diffs = np.array(diffs)
    assert (diffs > 0).mean() >= 0.9, diffs
    assert diffs.mean() > 3.0, diffs


def test_ct_classes_differ_in_dataset(dataset):
    """More ground-glass grey (between aerated lung and soft tissue) in covid slices."""
    frac = defaultdict(list)
    for key, data in dataset.items():
        if key.startswith("ct/"):
            img = _decode(data)
            frac[key.split("/")[1]].append(((img >= 120) & (img < 215)).mean())
    assert np.mean(frac["covid"]) > 1.2 * np.mean(frac["non_covid"]), frac
