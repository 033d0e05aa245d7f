"""Trains the ResNet-50 from scratch on the chest X-ray database.

Usage::

    python -m covid.train --data ../shared/data/covid19-radiography --run runs/main

A CPU-feasible schedule: ``mixed_bfloat16`` on CPU (``mixed_float16`` on GPU),
progressive resizing ending at 224 px, class-balanced sampling, warm-up then
cosine learning-rate decay, validation AUC in inference mode after every epoch,
early stopping in the final stage, a checkpoint every epoch and ``--resume``.
Model building runs inside a ``tf.distribute`` strategy: MirroredStrategy on
several GPUs, MultiWorkerMirroredStrategy when ``TF_CONFIG`` is set.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from covid.model.classifier import ModelMetadata, build_model, save_model
from covid.training.backend import probe_record
from covid.training.data import (
    CLASS_NAMES,
    DEFAULT_DATA_DIR,
    Dataset,
    find_dataset,
    make_split,
    make_tf_dataset,
)
from covid.training.lung_data import focused_dataset

LOG = logging.getLogger("covid.training.train")


@dataclass
class Stage:
    """One progressive-resizing stage: an image side and a number of epochs."""

    size: int
    epochs: int


@dataclass
class TrainState:
    """What a resumed run needs besides the checkpointed model."""

    epoch: int = 0
    best_auc: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)


def parse_stages(text: str) -> list[Stage]:
    """Parses ``"112:18,160:4,224:3"`` into stages.

    Args:
        text: Comma-separated ``size:epochs`` pairs.

    Returns:
        The stages, in order.

    Raises:
        ValueError: The text is malformed.
    """
    stages = []
    for part in text.split(","):
        size, _, epochs = part.partition(":")
        if not size.strip().isdigit() or not epochs.strip().isdigit():
            raise ValueError(f"bad stage '{part}': expected SIZE:EPOCHS, e.g. 224:3")
        stages.append(Stage(int(size), int(epochs)))
    return stages


def stage_of_epoch(stages: list[Stage], epoch: int) -> Stage:
    """Returns the stage a 0-based epoch falls in."""
    end = 0
    for stage in stages:
        end += stage.epochs
        if epoch < end:
            return stage
    return stages[-1]


def choose_strategy():
    """Picks a distribution strategy (TensorFlow backend only; others train as they are)."""
    if keras.backend.backend() != "tensorflow":
        import contextlib

        return type("NoStrategy", (), {"scope": staticmethod(contextlib.nullcontext)})()
    if "TF_CONFIG" in os.environ:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _precision_policy(name: str) -> str:
    if name != "auto":
        return name
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"


def _lr_schedule(peak: float, total_steps: int, warmup: int):
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 100,
        decay_steps=max(total_steps - warmup, 1),
        alpha=0.01,
        warmup_target=peak,
        warmup_steps=warmup,
    )


def inference_auc(model: keras.Model, images: np.ndarray, labels: np.ndarray, size: int) -> float:
    """Validation AUC of the positive class with the model in inference mode.

    Args:
        model: The classifier (BatchNorm uses its moving statistics).
        images: (N, S, S, 1) uint8 images.
        labels: (N,) class indices; class 0 is the positive (COVID) class.
        size: Side to resize to.

    Returns:
        The ROC AUC of ``p(class 0)`` for ``label == 0``.
    """
    ds = make_tf_dataset(images, labels, 64, size, training=False)
    probs = model.predict(ds, verbose=0)
    return float(roc_auc_score(labels == 0, probs[:, 0]))


def reestimate_batchnorm(
    model: keras.Model, images: np.ndarray, size: int, batches: int = 40, batch_size: int = 32
) -> None:
    """Re-estimates BatchNorm moving statistics with forward passes in training mode.

    No weight is updated; only the moving means and variances follow the
    current weights on unaugmented training images.
    """
    rng = np.random.default_rng(0)

    @tf.function
    def _forward(x):
        model(x, training=True)

    for _ in range(batches):
        idx = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
        x = tf.image.resize(tf.cast(images[idx], tf.float32), (size, size), antialias=True)
        _forward(x)


def _to_float32(model: keras.Model, n_classes: int) -> keras.Model:
    """Copies a mixed-precision model's weights into a float32 one for serving."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean = build_model(n_classes=n_classes)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    clean.set_weights(model.get_weights())
    return clean


def plot_history(history: list[dict], stages: list[Stage], path: Path) -> None:
    """Saves training loss and validation AUC per epoch as a PNG."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] + 1 for h in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_auc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_auc.plot(epochs, [h["val_auc"] for h in history], marker="o", color="tab:green")
    ax_auc.set(xlabel="epoch", ylabel="AUC", title="Validation AUC (inference mode)")
    boundary = 0
    for stage in stages[:-1]:
        boundary += stage.epochs
        for ax in (ax_loss, ax_auc):
            ax.axvline(boundary + 0.5, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _split_record(dataset: Dataset, split: dict[str, np.ndarray], root: Path) -> dict:
    """The split as relative file names per side, with per-class counts."""
    record: dict = {"root": str(root), "files": {}, "counts": {}}
    for side, index in split.items():
        sub = dataset.subset(index)
        record["files"][side] = [str(p.relative_to(root)) for p in sub.paths]
        record["counts"][side] = {
            name: int((sub.labels == c).sum()) for c, name in enumerate(CLASS_NAMES)
        }
    return record


def _validation_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """A stratified random subset of at most ``limit`` validation images."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.choice(idx, size=round(limit * len(idx) / len(labels)), replace=False))
    return np.sort(np.concatenate(keep))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m covid.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="dataset folder")
    parser.add_argument("--run", type=Path, default=Path("runs/main"), help="run folder")
    parser.add_argument("--stages", default="112:18,160:4,224:3", help="SIZE:EPOCHS,...")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--bn-momentum", type=float, default=0.9)
    parser.add_argument("--patience", type=int, default=3, help="final-stage early stopping")
    parser.add_argument("--val-limit", type=int, default=800, help="val images scored per epoch")
    parser.add_argument("--max-images", type=int, default=0, help="tiny-subset runs (per class)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto", help="auto, float32 or mixed_bfloat16")
    parser.add_argument("--backend", default="auto", help="set by python -m covid.train")
    parser.add_argument("--focus", default="crop+attenuate",
                        help="input mode: full, crop, attenuate, crop+attenuate or crop+mask")
    parser.add_argument("--lung-model", type=Path, default=Path("models/lung_unet.keras"))
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this classifier's weights (e.g. the shipped v1)")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--weights", default=None, help="None, 'imagenet' or a local .h5 file")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="hash cache")
    return parser.parse_args(argv)


def _subsample(dataset: Dataset, per_class: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    keep = [
        rng.choice(np.flatnonzero(dataset.labels == c), size=per_class, replace=False)
        for c in range(len(CLASS_NAMES))
    ]
    return dataset.subset(np.sort(np.concatenate(keep)))


def train(args: argparse.Namespace) -> Path:
    """Runs (or resumes) training and exports the float32 model with metadata.

    Args:
        args: Parsed command-line arguments (see :func:`parse_args`).

    Returns:
        The exported ``model.keras`` path inside the run folder.
    """
    started = time.time()
    run = args.run
    run.mkdir(parents=True, exist_ok=True)
    stages = parse_stages(args.stages)
    final_size = stages[-1].size
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(_precision_policy(args.precision))

    dataset = find_dataset(args.data)
    if args.max_images:
        dataset = _subsample(dataset, args.max_images, args.seed)
    split = make_split(dataset, seed=args.seed, cache_dir=args.cache_dir)
    (run / "split.json").write_text(json.dumps(_split_record(dataset, split, args.data)))
    train_set, val_set = dataset.subset(split["train"]), dataset.subset(split["val"])
    LOG.info("train %s, val %s", np.bincount(train_set.labels), np.bincount(val_set.labels))
    segmenter = None
    if args.focus != "full":
        from covid.model.lungs import LungSegmenter

        segmenter = LungSegmenter.from_file(args.lung_model)
    x_train = focused_dataset(train_set.paths, final_size, args.focus, segmenter).x
    val_keep = _validation_subset(val_set.labels, args.val_limit, args.seed)
    x_val = focused_dataset(val_set.subset(val_keep).paths, final_size, args.focus, segmenter).x
    y_val = val_set.labels[val_keep]

    total_epochs = sum(s.epochs for s in stages)
    checkpoint, state_file = run / "checkpoint.keras", run / "state.json"
    strategy = choose_strategy()
    with strategy.scope():
        if args.resume and checkpoint.exists():
            model = keras.saving.load_model(checkpoint)
            state = TrainState(**json.loads(state_file.read_text()))
            # The schedule follows this invocation's stages, so a resumed run may
            # be shortened or extended and still anneal to the end.
            model.optimizer.learning_rate = _lr_schedule(
                args.lr, total_epochs * args.steps_per_epoch, args.warmup_steps
            )
            LOG.info("resumed after epoch %d", state.epoch)
        else:
            model = build_model(
                len(CLASS_NAMES), weights=args.weights, bn_momentum=args.bn_momentum
            )
            if args.init:
                from covid.model.classifier import load_model

                model.set_weights(load_model(args.init)[0].get_weights())
                LOG.info("initialised from %s", args.init)
            schedule = _lr_schedule(
                args.lr, total_epochs * args.steps_per_epoch, args.warmup_steps
            )
            model.compile(
                optimizer=keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
                metrics=["accuracy"],
            )
            state = TrainState()

    final_start = total_epochs - stages[-1].epochs
    for epoch in range(state.epoch, total_epochs):
        size = stage_of_epoch(stages, epoch).size
        tick = time.time()
        ds = make_tf_dataset(
            x_train, train_set.labels, args.batch_size, size, training=True, seed=args.seed + epoch
        )
        fit = model.fit(ds, steps_per_epoch=args.steps_per_epoch, epochs=1, verbose=0)
        auc = inference_auc(model, x_val, y_val, final_size)
        record = {
            "epoch": epoch, "size": size, "loss": float(fit.history["loss"][-1]),
            "accuracy": float(fit.history["accuracy"][-1]), "val_auc": auc,
            "seconds": round(time.time() - tick, 1),
        }
        state.history.append(record)
        state.epoch = epoch + 1
        LOG.info("epoch %d/%d %s", epoch + 1, total_epochs, json.dumps(record))
        if auc > state.best_auc:
            state.best_auc, state.best_epoch = auc, epoch
            model.save_weights(run / "best.weights.h5")
        model.save(checkpoint)
        state_file.write_text(json.dumps(state.__dict__, indent=1))
        plot_history(state.history, stages, run / "history.png")
        if epoch >= final_start and epoch - state.best_epoch >= args.patience:
            LOG.info("early stop: no AUC gain for %d epochs", args.patience)
            break

    if (run / "best.weights.h5").exists():
        model.load_weights(run / "best.weights.h5")
    auc_before = inference_auc(model, x_val, y_val, final_size)
    backup = [w.numpy().copy() for w in model.weights]
    reestimate_batchnorm(model, x_train, final_size)
    auc_after = inference_auc(model, x_val, y_val, final_size)
    if auc_after < auc_before:
        for var, value in zip(model.weights, backup, strict=True):
            var.assign(value)
    LOG.info("BN re-estimation: val AUC %.4f -> %.4f", auc_before, auc_after)

    metadata = ModelMetadata(
        input_size=final_size,
        input_mode=args.focus,
        lung_model_sha256=segmenter.metadata.sha256 if segmenter is not None else "",
        trained_on=f"{args.data.name}: {len(dataset.paths)} images "
        f"({', '.join(f'{(dataset.labels == c).sum()} {n}' for c, n in enumerate(CLASS_NAMES))})",
        splits=_split_record(dataset, split, args.data)["counts"],
        recipe={
            "architecture": "keras.applications.ResNet50, random init"
            if args.weights is None else f"keras.applications.ResNet50, weights={args.weights}",
            "stages": args.stages, "steps_per_epoch": args.steps_per_epoch,
            "batch_size": args.batch_size, "optimizer": "AdamW", "peak_lr": args.lr,
            "weight_decay": args.weight_decay, "lr_schedule": "linear warm-up + cosine decay",
            "warmup_steps": args.warmup_steps, "bn_momentum": args.bn_momentum,
            "sampling": "class-balanced", "precision": keras.mixed_precision.global_policy().name,
            "augmentation": "rotation +-11 deg, shift 6%, zoom 12%, brightness 15%, "
            "contrast 25%, JPEG quality 40-95; no flips",
            "epochs_run": state.epoch, "best_epoch": state.best_epoch + 1,
            "val_auc_best_epoch": state.best_auc,
            "bn_reestimation": {"val_auc_before": auc_before, "val_auc_after": auc_after,
                                "kept": auc_after >= auc_before},
            "duplicate_grouping": "256-bit pHash, Hamming <= 40, groups kept within one split",
            "split_seed": args.seed, "train_seconds": round(time.time() - started),
            "input_mode": args.focus, "label_smoothing": args.label_smoothing,
            "initialised_from": str(args.init) if args.init else "random",
            "best_checkpoint": "best validation AUC (inference mode, final size) over all epochs",
            "backend": keras.backend.backend(), "backend_probe": probe_record(),
            "history": state.history,
        },
    )
    exported = run / "model.keras"
    save_model(_to_float32(model, len(CLASS_NAMES)), metadata, exported)
    LOG.info("exported %s in %.0f s", exported, time.time() - started)
    return exported


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
