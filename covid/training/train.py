"""Trains the three-class ResNet-50 (COVID-19, other pneumonia, normal), lung-guided.

Usage::

    python -m covid.train --run ~/.cache/covid-runs/v4 --init models/covid_resnet50.keras

One learning-rate schedule (linear warm-up, cosine decay) spans every stage of
progressive resizing; AdamW keeps an exponential moving average of the weights,
and the average is what is validated and exported. Batches are drawn by strata
of age and class that leave no age prior (:func:`covid.training.inputs.sampling_weights`).
With ``--cam-weight`` above zero the loss adds the share of each class's map
outside the lungs (:mod:`covid.training.guided`). With ``--output-stride 16``
(the default) the last stage is dilated, so that the map is a 10 x 10 grid at
160 px instead of 5 x 5; the map loss and Grad-CAM stay at the last block, where
the class activation map the loss shapes is exactly Grad-CAM, every weight keeps
v3's shape (so v3 initialises the run), and serving stays one pass (about 1.6
times the arithmetic). A map loss at ``conv4_block6_out`` would need Grad-CAM's
gradient inside the loss (a second derivative through the last stage), and a
larger input four times the arithmetic. A checkpoint (weights,
optimizer state with the average, and the run's state) is written after every
epoch, atomically, so that ``--resume`` continues a run that a session's end
killed, with its recipe flags (:mod:`covid.training.resume`), and ``--export-now``
exports an unfinished run's checkpoint. Models are built in a ``tf.distribute`` strategy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from covid.inputs.preprocess import CONTRASTS
from covid.model.classes import CLASS_NAMES, COVID
from covid.model.metadata import ModelMetadata
from covid.model.network import build_model, save_with_metadata
from covid.training.averaging import averaged_weights, reestimate_batchnorm
from covid.training.catalogue import data_dir
from covid.training.guided import OutsideLungsLoss, cell_shares, guided_model, map_loss_kind
from covid.training.inputs import TrainingData, balanced_batches, prepare_data
from covid.training.metrics import validation_record
from covid.training.probe_record import probe_record
from covid.training.resume import check_same_recipe

LOG = logging.getLogger("covid.training.train")
VERSION = "4"
"""The version this recipe trains (``-interim`` for an export of an unfinished run)."""
CAM_LAYER = "conv5_block3_out"
"""The last convolutional block: its Grad-CAM is the class activation map the loss shapes."""
RUNS_DIR = Path.home() / ".cache" / "covid-runs"
"""Run folders live outside the work tree, so that they survive into the next session."""
DEFAULT_RUN = RUNS_DIR / f"v{VERSION}"
"""The run a command without ``--run`` starts; it refuses to touch one already there."""
CACHE_DIR = RUNS_DIR / "cache"


@dataclass
class Stage:
    """One progressive-resizing stage: an image side and a number of epochs."""

    size: int
    epochs: int


@dataclass
class TrainState:
    """What a resumed run needs besides the checkpointed weights and optimizer."""

    epoch: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    initialised_from: str = ""
    invocations: list[dict] = field(default_factory=list)


def note_invocation(state: TrainState, args: argparse.Namespace) -> None:
    """Appends this command to the run's invocations: its flags, their values and first epoch.

    The values are recorded beside the command line because a flag left out
    takes the default of the code that ran it (a run once trained its first
    epochs at the default learning rate, and the recipe said only the last
    command's). :func:`note_epoch` extends the entry as each epoch finishes, so
    the recipe says which command trained which epochs.
    """
    options = {k: str(v) if isinstance(v, Path) else v
               for k, v in sorted(vars(args).items()) if k != "argv"}
    state.invocations.append({"argv": list(args.argv), "options": options,
                              "backend": keras.backend.backend(),  # the one it ran on
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "epochs": [state.epoch + 1, state.epoch]})


def note_epoch(state: TrainState) -> None:
    """Records that the last invocation trained up to the (1-based) current epoch."""
    if state.invocations:
        state.invocations[-1]["epochs"][1] = state.epoch


def parse_stages(text: str) -> list[Stage]:
    """Parses ``"128:60,160:20,224:14"`` into stages.

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


def initialise(model: keras.Model, path: Path | None) -> str:
    """Copies the matching layers of the ``--init`` model into a new run's model.

    Args:
        model: The freshly built classifier.
        path: The ``--init`` model file, or None (random weights stay).

    Returns:
        The starting weights as the recipe records them: ``"random"``, or the
        model's name, version and SHA-256 with the path. It is recorded when the
        run starts, because the file at ``path`` (the shipped model, say) may be
        replaced before the run ends.
    """
    if path is None:
        return "random"
    from covid.model.network import load_model

    source, meta = load_model(path)
    skipped = copy_matching_weights(source, model)
    LOG.info("initialised from %s (not copied: %s)", path, skipped)
    return f"{meta.name} version {meta.version}, sha256 {meta.sha256} ({path})"


def choose_strategy():
    """MultiWorkerMirrored with ``TF_CONFIG``, Mirrored on several GPUs (TensorFlow only)."""
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


def lr_schedule(peak: float, total_steps: int, warmup: int):
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 1% of it."""
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak / 100, decay_steps=max(total_steps - warmup, 1),
        alpha=0.01, warmup_target=peak, warmup_steps=warmup,
    )


def _to_float32(model: keras.Model, n_classes: int, output_stride: int) -> keras.Model:
    """Copies a mixed-precision model's weights into a float32 one for serving."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        clean = build_model(n_classes=n_classes, output_stride=output_stride)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    clean.set_weights(model.get_weights())
    return clean


def copy_matching_weights(source: keras.Model, target: keras.Model) -> list[str]:
    """Copies weights layer by layer where names and shapes agree (e.g. a 2-class backbone).

    Returns:
        The names of the target's layers with weights that were not copied.
    """
    skipped = []
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            theirs = source.get_layer(layer.name).get_weights()
        except ValueError:
            skipped.append(layer.name)
            continue
        if [w.shape for w in theirs] != [tuple(w.shape) for w in layer.weights]:
            skipped.append(layer.name)
            continue
        layer.set_weights(theirs)
    return skipped


def build_training(args: argparse.Namespace, total_steps: int):
    """The classifier, its guided training model and the compiled optimizer.

    Returns:
        ``(model, trainer)``: the serving classifier and the two-output model
        sharing its weights, compiled with the classification and map losses.
    """
    model = build_model(len(CLASS_NAMES), bn_momentum=args.bn_momentum,
                        output_stride=args.output_stride)
    trainer = guided_model(model, CAM_LAYER)
    optimizer = keras.optimizers.AdamW(
        lr_schedule(args.lr, total_steps, args.warmup_steps), weight_decay=args.weight_decay,
        use_ema=args.ema > 0, ema_momentum=args.ema or 0.99,
    )
    trainer.compile(
        optimizer=optimizer,
        loss={"probs": keras.losses.CategoricalCrossentropy(label_smoothing=args.label_smoothing),
              "cams": OutsideLungsLoss(args.infection_weight, args.peak_weight)},
        loss_weights={"probs": 1.0, "cams": args.cam_weight},
    )
    optimizer.build(trainer.trainable_variables)
    return model, trainer


def save_checkpoint(run: Path, trainer: keras.Model, state: TrainState) -> None:
    """Writes weights, optimizer state and run state, each replaced atomically."""
    tmp = run / "tmp.weights.h5"
    trainer.save_weights(tmp)
    os.replace(tmp, run / "checkpoint.weights.h5")
    values = {f"v{i}": np.asarray(v) for i, v in enumerate(trainer.optimizer.variables)}
    np.savez(run / "optimizer.tmp.npz", **values)
    os.replace(run / "optimizer.tmp.npz", run / "optimizer.npz")
    (run / "state.tmp.json").write_text(json.dumps(state.__dict__, indent=1))
    os.replace(run / "state.tmp.json", run / "state.json")


def load_checkpoint(run: Path, trainer: keras.Model) -> TrainState:
    """Restores what :func:`save_checkpoint` wrote into a freshly built trainer."""
    trainer.load_weights(run / "checkpoint.weights.h5")
    with np.load(run / "optimizer.npz") as stored:
        variables = trainer.optimizer.variables
        if len(stored.files) != len(variables):
            raise ValueError(f"checkpoint has {len(stored.files)} optimizer variables, "
                             f"the optimizer {len(variables)}: not the same configuration")
        for i, var in enumerate(variables):
            var.assign(stored[f"v{i}"])
    return TrainState(**json.loads((run / "state.json").read_text()))


def _training_dataset(data: TrainingData, args, size: int, epoch: int):
    """One epoch's augmented batches, drawn by age and class, with their map targets."""
    from covid.training.augment import augment_stack
    from covid.training.inputs import sampling_weights

    cells, side = size // args.output_stride, data.train_stack.shape[1]
    weights = sampling_weights(data.train, args.adult_share)

    def _prepare(stack, labels):
        x = tf.cast(stack, tf.float32)
        if side != size:
            x = tf.image.resize(x, (size, size), antialias=True)
        films, masks = augment_stack(x, args.seed + epoch)
        shares = tf.image.resize(tf.clip_by_value(masks / 255.0, 0.0, 1.0), (cells, cells),
                                 method="area")
        return films, {"probs": tf.one_hot(labels, len(CLASS_NAMES)), "cams": shares}

    spec = (tf.TensorSpec((args.batch_size, side, side, 3), tf.uint8),
            tf.TensorSpec((args.batch_size,), tf.int64))
    ds = tf.data.Dataset.from_generator(
        lambda: balanced_batches(data.train_stack, data.train.labels, weights, args.batch_size,
                                 args.steps_per_epoch, args.seed * 1000 + epoch),
        output_signature=spec)
    return ds.map(_prepare, num_parallel_calls=2).prefetch(2)


def validate(model, trainer, data: TrainingData, size: int, bn_batches: int,
             stride: int = 32) -> dict:
    """Validation figures with the averaged weights, at ``size`` (``stride`` pixels a cell)."""
    stack = data.val_stack
    x = tf.image.resize(tf.cast(stack[..., :1], tf.float32), (size, size), antialias=True)
    with averaged_weights(model, trainer, data.train_stack[..., :1], size, bn_batches):
        out = trainer.predict(x.numpy(), batch_size=32, verbose=0)
    masks = tf.image.resize(tf.cast(stack[..., 1:], tf.float32), (size, size), antialias=True)
    shares = cell_shares(np.clip(masks.numpy(), 0, 255).astype(np.uint8), size // stride)
    return validation_record(out["probs"], out["cams"], shares, data.val)


def run_epoch(model, trainer, data: TrainingData, args, stages, state: TrainState) -> dict:
    """Trains one epoch, validates it and returns its history record."""
    size = stage_of_epoch(stages, state.epoch).size
    tick = time.time()
    fit = trainer.fit(_training_dataset(data, args, size, state.epoch),
                      steps_per_epoch=args.steps_per_epoch, epochs=1, verbose=0)
    seconds = time.time() - tick
    images = args.steps_per_epoch * args.batch_size
    record = {"epoch": state.epoch, "size": size, "seconds": round(seconds, 1),
              "img_per_s": round(images / seconds, 2),
              "images_seen": state.images_seen + images,
              "lr": float(keras.ops.convert_to_numpy(
                  trainer.optimizer.learning_rate)),
              "map_loss": map_loss_kind(args.peak_weight),
              **{k: float(v[-1]) for k, v in fit.history.items()}}
    last = state.epoch + 1 == sum(s.epochs for s in stages)
    if (state.epoch + 1) % args.val_every == 0 or last:
        record.update(validate(model, trainer, data, size, args.bn_batches, args.output_stride))
    return record


def _curve(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(thousands of images seen, value) at the epochs that measured ``key``."""
    kept = [h for h in history if key in h]
    return [h["images_seen"] / 1000 for h in kept], [h[key] for h in kept]


def plot_history(history: list[dict], path: Path) -> None:
    """Saves the loss terms and validation figures against images seen, as a PNG."""
    from matplotlib.figure import Figure

    seen = [h["images_seen"] / 1000 for h in history]
    fig = Figure(figsize=(13, 4))
    ax_loss, ax_auc, ax_lung = fig.subplots(1, 3)
    for key, label in (("probs_loss", "cross-entropy"), ("cams_loss", "map outside lungs")):
        ax_loss.plot(seen, [h.get(key, np.nan) for h in history], label=label)
    ax_loss.set(xlabel="training images seen (thousands)", title="Training loss")
    ax_loss.legend()
    for key, label in (("val_auc_covid", "COVID-19 vs rest"), ("val_auc_finding", "any finding")):
        ax_auc.plot(*_curve(history, key), marker=".", label=label)
    ax_auc.set(xlabel="training images seen (thousands)", title="Validation AUC (EMA weights)")
    ax_auc.legend()
    for key, label in (("val_lung_share", "map energy inside lungs"),
                       ("val_peak_in_lungs", "map peak in a lung cell"),
                       ("val_maps_empty", "maps with nothing positive"),
                       ("val_pneumonia_home", "pneumonias sent home")):
        ax_lung.plot(*_curve(history, key), marker=".", label=label)
    ax_lung.set(xlabel="training images seen (thousands)", title="Validation (share)")
    ax_lung.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def export(model, trainer, data: TrainingData, args, state: TrainState, final_size: int) -> Path:
    """Exports the averaged weights, BatchNorm re-estimated, as float32 with metadata."""
    if trainer.optimizer.use_ema:
        trainer.optimizer.finalize_variable_values(trainer.trainable_variables)
    reestimate_batchnorm(model, data.train_stack[..., :1], final_size, args.export_bn_batches)
    finished = state.epoch >= sum(s.epochs for s in parse_stages(args.stages))
    metadata = ModelMetadata(
        name="Chest X-ray ResNet-50: COVID-19, other pneumonia, normal (lung-guided)",
        version=VERSION if finished else f"{VERSION}-interim", class_names=list(CLASS_NAMES),
        positive_class=COVID, input_size=final_size, input_mode=args.focus,
        input_contrast=args.contrast, gradcam_layer=CAM_LAYER,
        map_grid=[final_size // args.output_stride] * 2,
        lung_model_sha256=data.lung_model_sha256, trained_on=data.description,
        splits=data.split_record["counts"], recipe=recipe(args, state, data),
    )
    exported = args.run / "model.keras"
    save_with_metadata(_to_float32(model, len(CLASS_NAMES), args.output_stride), metadata, exported)
    (args.run / "split.json").write_text(json.dumps(data.split_record))
    return exported


def recipe(args, state: TrainState, data: TrainingData) -> dict:
    """The training recipe as recorded in the model's metadata."""
    from covid.training.augment import describe

    return {
        "architecture": "keras.applications.ResNet50 + global average pooling + dense",
        "initialised_from": state.initialised_from or str(args.init or "random"),
        "stages": args.stages, "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size, "images_seen": state.images_seen,
        "images_planned": sum(s.epochs for s in parse_stages(args.stages))
        * args.steps_per_epoch * args.batch_size,
        "optimizer": "AdamW", "peak_lr": args.lr, "weight_decay": args.weight_decay,
        "lr_schedule": "linear warm-up + one cosine decay over the whole budget",
        "warmup_steps": args.warmup_steps, "ema_momentum": args.ema,
        "bn_momentum": args.bn_momentum, "export_bn_batches": args.export_bn_batches,
        "sampling": f"strata of (age, class): Normal a third of each age group's draws, "
                    f"the rest equally to its pathological classes; adults "
                    f"{args.adult_share:.0%} of the draws; mixed-age pneumonias in both "
                    f"age groups' pneumonia strata; films equally within a stratum",
        "precision": keras.mixed_precision.global_policy().name,
        "augmentation": describe(), "input_mode": args.focus,
        "input_contrast": args.contrast, "output_stride": args.output_stride,
        "invocations": state.invocations,  # the flags above are the last one's
        "label_smoothing": args.label_smoothing,
        "lung_guidance": {
            "cam_weight": args.cam_weight, "infection_weight": args.infection_weight,
            "peak_weight": args.peak_weight,
            "layer": CAM_LAYER, "masks": data.mask_counts,
            "how": "training loss only: share of each class's class-activation map mass "
                   "(|map|) outside the lungs, and of the positive COVID-19 map outside the "
                   "radiologists' infection mask; with peak_weight, the same shares of a "
                   "soft-max over each map's cells, which follows its peak; the maps shown "
                   "are never masked",
            "map_loss_by_epoch": _map_loss_spans(state.history),
        },
        "duplicate_grouping": "256-bit pHash, Hamming <= 40, groups kept within one split",
        "split_seed": args.seed, "train_seconds": round(state.train_seconds),
        "backend": keras.backend.backend(), "backend_probe": probe_record(),
        "history": state.history,
    }


def _map_loss_spans(history: list[dict]) -> list[str]:
    """Which map loss trained which epochs ("1-37: positive part", ...), from the history."""
    spans: list[list] = []
    for record in history:
        kind = record.get("map_loss", "positive part")
        if spans and spans[-1][2] == kind:
            spans[-1][1] = record["epoch"] + 1
        else:
            spans.append([record["epoch"] + 1, record["epoch"] + 1, kind])
    return [f"{a}-{b}: {kind}" for a, b, kind in spans]


def train(args: argparse.Namespace) -> Path:
    """Runs (or resumes) training and exports the float32 model with metadata.

    Returns:
        The exported ``model.keras`` path inside the run folder.
    """
    check_run_folder(args)
    args.run.mkdir(parents=True, exist_ok=True)
    stages = parse_stages(args.stages)
    total_epochs = sum(s.epochs for s in stages)
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(_precision_policy(args.precision))
    resuming = (args.resume or args.export_now) and (args.run / "state.json").exists()
    if resuming:  # before the data and the network, which take minutes
        check_same_recipe(json.loads((args.run / "state.json").read_text())["invocations"], args)
    data = prepare_data(args, stages[-1].size)
    with choose_strategy().scope():
        model, trainer = build_training(args, total_epochs * args.steps_per_epoch)
        # A checkpoint replaces every weight, so a resumed run does not load --init.
        state = TrainState(initialised_from="" if resuming else initialise(model, args.init))
    if resuming:
        state = load_checkpoint(args.run, trainer)
        LOG.info("resumed after epoch %d (%d images seen)", state.epoch, state.images_seen)
    if args.export_now:
        if not state.epoch:
            raise SystemExit(f"--export-now: no checkpoint in {args.run}")
        # The size the weights last trained at: a jump to the final size would not fit them.
        size = stage_of_epoch(stages, state.epoch - 1).size
        return export(model, trainer, data, args, state, size)
    note_invocation(state, args)
    while state.epoch < total_epochs:
        record = run_epoch(model, trainer, data, args, stages, state)
        state.history.append(record)
        state.epoch += 1
        note_epoch(state)
        state.images_seen = record["images_seen"]
        state.train_seconds += record["seconds"]
        LOG.info("epoch %d/%d %s", state.epoch, total_epochs, json.dumps(record))
        save_checkpoint(args.run, trainer, state)
        plot_history(state.history, args.run / "history.png")
    exported = export(model, trainer, data, args, state, stages[-1].size)
    LOG.info("exported %s", exported)
    return exported


def check_run_folder(args: argparse.Namespace) -> None:
    """Refuses a command that would touch a run it did not name.

    Without ``--run`` the trainer starts :data:`DEFAULT_RUN`, and only while that
    folder is absent or empty: resuming, exporting or overwriting a run (even
    one that has not finished its first epoch) needs its folder named.

    Raises:
        SystemExit: No ``--run``, and the default folder already holds something.
    """
    if args.run_named or not args.run.is_dir() or not any(args.run.iterdir()):
        return
    raise SystemExit(f"{args.run} already holds a run; name it with --run {args.run} "
                     "(and --resume to continue it) or choose another folder")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses the command line."""
    p = argparse.ArgumentParser(prog="python -m covid.train", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="shared data folder (COVID_DATA_DIR)")
    p.add_argument("--base-split", type=Path, default=Path("models/covid_resnet50.split.json"),
                   help="earlier split whose films keep their sides")
    p.add_argument("--run", type=Path, default=None,
                   help=f"run folder (checkpoints); without it, {DEFAULT_RUN} if no run is there")
    p.add_argument("--stages", default="160:94", help="SIZE:EPOCHS,...")
    p.add_argument("--steps-per-epoch", type=int, default=100)
    p.add_argument("--output-stride", type=int, default=16, choices=(16, 32),
                   help="input pixels per map cell: 16 dilates the last stage")
    p.add_argument("--contrast", default="equalise", choices=CONTRASTS,
                   help="how the input's grey levels are standardised")
    p.add_argument("--adult-share", type=float, default=2 / 3,
                   help="share of the draws from the adults' strata")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--warmup-steps", type=int, default=300)
    p.add_argument("--ema", type=float, default=0.998, help="EMA momentum of the weights (0: off)")
    p.add_argument("--bn-momentum", type=float, default=0.9)
    p.add_argument("--bn-batches", type=int, default=20,
                   help="batches re-estimating BatchNorm for the averaged weights at validation")
    p.add_argument("--export-bn-batches", type=int, default=100, help="the same, at export")
    p.add_argument("--cam-weight", type=float, default=1.0, help="weight of the lung-map loss")
    p.add_argument("--infection-weight", type=float, default=0.5)
    p.add_argument("--peak-weight", type=float, default=0.5, help="map-peak term (0: mass only)")
    p.add_argument("--val-limit", type=int, default=600, help="val films scored per epoch")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and last)")
    p.add_argument("--max-images", type=int, default=0, help="tiny runs: films per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", help="auto, float32 or mixed_bfloat16")
    p.add_argument("--backend", default="auto", help="set by python -m covid.train")
    p.add_argument("--focus", default="crop",
                   help="input mode: full, crop, attenuate, crop+attenuate or crop+mask")
    p.add_argument("--lung-model", type=Path, default=Path("models/lung_unet.keras"))
    p.add_argument("--init", type=Path, default=None,
                   help="start from this classifier's weights where layers match")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--resume", action="store_true", help="continue the run, same recipe flags")
    p.add_argument("--export-now", action="store_true",
                   help="export the checkpoint as it stands, at its last size, untrained further")
    p.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="hashes, segmentations")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.run_named = args.run is not None
    args.run = args.run or DEFAULT_RUN
    args.data = args.data or data_dir()
    return args


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args(argv))


