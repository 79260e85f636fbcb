"""Diagnostic: does a deep classifier from random weights learn, or only look as if it did?

Trains one backbone (default ResNet50 from random weights, the classification pipeline's
``resnet50`` at the CPU defaults) on a small, class-balanced sample of the chest X-rays
in ``../shared/data`` (whole images, no lung masks) twice, same data, same seed:

* ``keras_default``: Keras' BatchNorm momentum 0.99, no warm-up (the pipeline before
  issue 13);
* ``fixed``: BatchNorm momentum ``--bn-momentum`` (default 0.9) and a linear learning-rate
  warm-up over the first epoch;
* ``recomputed``: as ``fixed``, and after each epoch's last step the moving statistics are
  recomputed from ``--recompute-batches`` training batches at the current weights
  ("precise BN"; the CPU defaults of the deep backbones in
  conf/base/parameters/classification.yml).

Per epoch it prints the training loss (training mode, running mean over the epoch),
the validation loss and balanced accuracy (inference mode: BatchNorm moving statistics),
and the validation loss of the same weights with BatchNorm in training mode (batch
statistics). When the two validation losses differ by far, the network learned but its
moving statistics do not describe its activations: a training defect, not a lack of data.
It also prints seconds and CPU-seconds per epoch (for the pipeline's time estimate).

The split is random and stratified by class (not by patient: a diagnostic of training
mechanics, not a benchmark of generalisation). No asserts; nothing is written.

Usage:
    nice -n 15 python benchmarks/classification_batchnorm.py [--data ../shared/data]
        [--builder resnet50] [--image-size 64] [--per-class 75] [--epochs 5]
        [--variants keras_default,fixed,recomputed]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ("normal", "covid", "bacterial", "viral")


def _sample(data: Path, per_class: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    manifest = pd.read_csv(data / "manifest.csv")
    rows = manifest[(manifest["task"] == "classification") & manifest["label"].isin(CLASSES)]
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for label in CLASSES:
        paths = rows.loc[rows["label"] == label, "path"].to_numpy()
        chosen = rng.permutation(paths)[: per_class + per_class // 3]
        frame = pd.DataFrame({"path": [str(data / p) for p in chosen], "label": CLASSES.index(label)})
        train.append(frame.iloc[:per_class])
        validation.append(frame.iloc[per_class:])
    return pd.concat(train), pd.concat(validation)


def _batchnorm_mode_losses(model, dataset) -> tuple[float, float, float]:
    """Validation loss in inference mode, in training mode (batch statistics), balanced acc."""
    import keras
    from sklearn.metrics import balanced_accuracy_score

    losses = {False: [], True: []}
    y_true, y_pred = [], []
    for images, labels in dataset:
        for training in (False, True):
            # training=True also switches dropout on; the head's dropout is the only one.
            probabilities = model(images, training=training)
            loss = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
            losses[training].extend(np.asarray(loss).tolist())
            if not training:
                y_true.extend(np.asarray(labels).tolist())
                y_pred.extend(np.asarray(probabilities).argmax(axis=1).tolist())
    # Batch statistics updated by training=True above must not leak into the next epoch:
    # the caller restores the weights (moving statistics included) after this.
    return float(np.mean(losses[False])), float(np.mean(losses[True])), float(balanced_accuracy_score(y_true, y_pred))


def run(args: argparse.Namespace, variant: str) -> None:
    import keras

    from covid_imaging.classification.models import build_classifier
    from covid_imaging.classification.training import make_classification_dataset, train_classifier

    keras.utils.set_random_seed(args.seed)
    train, validation = _sample(Path(args.data), args.per_class, args.seed)
    train_ds = make_classification_dataset(train["path"], train["label"].to_numpy(), image_size=args.image_size,
                                           batch_size=args.batch_size, shuffle=True, seed=args.seed, augment=True)
    validation_ds = make_classification_dataset(validation["path"], validation["label"].to_numpy(),
                                                image_size=args.image_size, batch_size=args.batch_size)
    extra = {"small": True} if args.builder == "hrnet" else {}
    model = build_classifier(args.builder, n_classes=len(CLASSES), input_size=args.image_size, **extra)
    params = {
        "epochs": 1, "optimizer": "adam", "learning_rate": 1e-3, "jit_compile": False,
        "early_stopping": {"enabled": False}, "reduce_lr": {"enabled": False},
        "batchnorm_momentum": None if variant == "keras_default" else args.bn_momentum,
        "warmup_epochs": 0 if variant == "keras_default" else 1,
        "batchnorm_recompute_batches": args.recompute_batches if variant == "recomputed" else 0,
    }
    print(f"\n== {variant}: {args.builder} {args.image_size} px, {len(train)} training / {len(validation)} "
          f"validation images, batch {args.batch_size}, BatchNorm momentum "
          f"{params['batchnorm_momentum'] or 0.99}, warm-up epochs {params['warmup_epochs']}, statistics "
          f"recomputed from {params['batchnorm_recompute_batches']} batches per epoch")
    print("epoch  train_loss  val_loss(inference)  val_loss(batch stats)  val_bal_acc  s/epoch  cpu_s/epoch")
    # One epoch per call so the two validation modes can be measured in between; the
    # optimizer state is kept (train_classifier compiles once, then resumes with initial_epoch).
    for epoch in range(args.epochs):
        wall, cpu = time.perf_counter(), time.process_time()
        model, history = train_classifier(model, train_ds, None, {**params, "epochs": epoch + 1},
                                          initial_epoch=epoch, compile=epoch == 0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        saved = model.get_weights()
        inference_loss, batch_stats_loss, balanced = _batchnorm_mode_losses(model, validation_ds)
        model.set_weights(saved)
        print(f"{epoch + 1:5d}  {history['loss'][-1]:10.3f}  {inference_loss:19.3f}  {batch_stats_loss:21.3f}  "
              f"{balanced:11.3f}  {wall:7.1f}  {cpu:11.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--builder", default="resnet50")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=75)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--bn-momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--recompute-batches", type=int, default=8)
    parser.add_argument("--variants", default="keras_default,fixed,recomputed")
    args = parser.parse_args()
    if not (Path(args.data) / "manifest.csv").is_file():
        print(f"No manifest.csv under {args.data}; point --data at the shared data folder.", file=sys.stderr)
        return 2
    print(f"CPUs: {os.cpu_count()}")
    total = time.perf_counter()
    for variant in args.variants.split(","):
        run(args, variant)
    print(f"\ntotal wall time {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
