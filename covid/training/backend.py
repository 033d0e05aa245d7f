"""Measure the machine, then pick: the fastest Keras backend and precision for training.

Keras 3 runs the same model on TensorFlow or PyTorch, and CPUs differ: on one
machine TensorFlow's ``mixed_bfloat16`` is the fastest, on another bf16 is
emulated and PyTorch in float32 is several times faster. The backend is fixed
when Keras is first imported, so each candidate is timed in a child process
(``python -m covid.training.backend --probe ...``) for a few training steps, and
the trainer re-executes itself under the winner (:func:`select_backend`).

This module imports neither Keras nor TensorFlow at its top, so that it can
choose before they load. Models trained on either backend are saved without
optimizer state and served on TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from covid.training.probe_record import PROBE_ENV

CANDIDATES: tuple[tuple[str, str], ...] = (
    ("tensorflow", "float32"),
    ("tensorflow", "mixed_bfloat16"),
    ("torch", "float32"),
    ("torch", "mixed_bfloat16"),
)
"""(backend, precision policy) pairs the probe tries."""

MODELS = ("resnet50", "unet", "guided")
"""What the probe can time: the plain classifier, the lung U-Net, or the trainer's step."""

_PROBE_TIMEOUT_S = 300


def _child_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def probe_one(
    backend: str, precision: str, model: str, size: int, batch: int, steps: int
) -> dict:
    """Times a few training steps of one backend and precision in a child process.

    Args:
        backend: ``"tensorflow"`` or ``"torch"``.
        precision: A Keras dtype policy name.
        model: One of :data:`MODELS`.
        size: Square image side.
        batch: Images per step.
        steps: Timed steps (after two untimed warm-up steps).

    Returns:
        ``{"backend", "precision", "img_per_s"}``; ``img_per_s`` is 0.0 and
        ``"error"`` says why when the candidate failed or is not installed.
    """
    cmd = [
        sys.executable, "-m", "covid.training.backend", "--probe", "--model", model,
        "--precision", precision, "--size", str(size), "--batch", str(batch),
        "--steps", str(steps),
    ]
    result = {"backend": backend, "precision": precision, "img_per_s": 0.0}
    try:
        done = subprocess.run(
            cmd, env=_child_env(backend), capture_output=True, text=True,
            timeout=_PROBE_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired:
        return {**result, "error": f"timed out after {_PROBE_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**result, "error": tail[:200]}
    return {**result, **json.loads(lines[-1])}


def probe(
    model: str,
    size: int,
    batch: int = 16,
    steps: int = 4,
    candidates: Sequence[tuple[str, str]] = CANDIDATES,
) -> list[dict]:
    """Times every candidate and prints one line each.

    Returns:
        One :func:`probe_one` result per candidate, in the given order.
    """
    results = []
    for backend, precision in candidates:
        result = probe_one(backend, precision, model, size, batch, steps)
        note = f" ({result['error']})" if "error" in result else ""
        print(f"probe {backend:10s} {precision:15s} {result['img_per_s']:6.1f} img/s{note}",
              file=sys.stderr, flush=True)
        results.append(result)
    return results


def fastest(results: Sequence[dict]) -> dict:
    """The fastest working candidate.

    Raises:
        RuntimeError: No candidate ran.
    """
    working = [r for r in results if r["img_per_s"] > 0]
    if not working:
        raise RuntimeError(f"no Keras backend could train here: {list(results)}")
    return max(working, key=lambda r: r["img_per_s"])


def select_backend(argv: Sequence[str], module: str, model: str, size: int) -> None:
    """Makes sure this process runs on the chosen backend, re-executing itself if not.

    Reads ``--backend`` (``auto``, ``tensorflow`` or ``torch``) and ``--precision``
    from ``argv``. With ``auto`` every candidate is probed and the fastest wins;
    the run then re-executes as ``python -m module ... --backend B --precision P``
    with ``KERAS_BACKEND`` set, and the probe's figures travel in the
    environment variable :data:`~covid.training.probe_record.PROBE_ENV`. Call it before
    anything imports Keras.

    Args:
        argv: The command line (without the program name).
        module: The ``python -m`` module to re-execute.
        model: The probe's model (``"resnet50"`` or ``"unet"``).
        size: The probe's image side.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--backend", default="auto", choices=("auto", "tensorflow", "torch"))
    parser.add_argument("--precision", default="auto")
    known, _ = parser.parse_known_args(list(argv))
    backend, precision = known.backend, known.precision
    if backend == "auto":
        results = probe(model, size)
        best = fastest(results)
        os.environ[PROBE_ENV] = json.dumps(results)
        backend, precision = best["backend"], best["precision"]
    if precision == "auto":
        precision = "float32"
    if os.environ.get("KERAS_BACKEND") == backend and known.backend != "auto":
        return
    rest = _without_options(list(argv), ("--backend", "--precision"))
    cmd = [sys.executable, "-m", module, *rest, "--backend", backend, "--precision", precision]
    print(f"training on {backend} with {precision}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(sys.executable, cmd, _child_env(backend))


def run_trainer(module: str, trainer: str, model: str, size: int) -> None:
    """A training tool's entry point: chooses the backend (re-executing), then trains.

    Args:
        module: The entry module that runs this (``"covid.train"``), re-executed
            under the chosen backend.
        trainer: The module whose ``main()`` trains (imported only once the
            backend is fixed, since importing Keras fixes it).
        model: The probe's model (``"resnet50"`` or ``"unet"``).
        size: The probe's image side.
    """
    select_backend(sys.argv[1:], module, model, size)
    importlib.import_module(trainer).main()


def _without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Drops ``--name value`` and ``--name=value`` pairs from an argument list."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(name + "=") for name in names):
            continue
        out.append(arg)
    return out


def _probe_model(model_name: str, size: int, batch: int):
    """A compiled model to time, with one batch of random inputs and targets.

    ``"guided"`` is the three-class trainer exactly as ``python -m covid.train``
    builds it with its defaults (dilated last stage, map outputs and loss, AdamW
    with the weights' average), so that its timing is the trainer's step.

    Returns:
        ``(model, x, y)``: x is (batch, size, size, 1) float32 in [0, 255].
    """
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 1)).astype(np.float32)
    if model_name == "guided":
        from covid.model.classes import CLASS_NAMES
        from covid.training.train import build_training, parse_args

        args = parse_args([])
        _, model = build_training(args, total_steps=1000)
        cells = size // args.output_stride
        y = {"probs": np.eye(len(CLASS_NAMES), dtype=np.float32)[
                 rng.integers(0, len(CLASS_NAMES), batch)],
             "cams": rng.uniform(size=(batch, cells, cells, 2)).astype(np.float32)}
        return model, x, y
    if model_name == "unet":
        from covid.model.lungs import build_unet

        model, y_shape = build_unet(size), (batch, size, size, 1)
        loss = "binary_crossentropy"
    else:
        from covid.model.network import build_model

        model = build_model(input_size=size)
        y_shape = (batch, model.output_shape[-1])
        loss = "categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.AdamW(1e-4), loss=loss)
    return model, x, (rng.uniform(size=y_shape) > 0.5).astype(np.float32)


def _time_training(model_name: str, precision: str, size: int, batch: int, steps: int) -> dict:
    import keras

    keras.mixed_precision.set_global_policy(precision)
    model, x, y = _probe_model(model_name, size, batch)
    for _ in range(2):
        model.train_on_batch(x, y)
    tick = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = time.perf_counter() - tick
    rate = round(batch * steps / seconds, 2)
    return {"img_per_s": rate, "keras_backend": keras.backend.backend()}


def _candidates(text: str) -> tuple[tuple[str, str], ...]:
    """``--candidates``: ``"torch:float32,tensorflow:float32"`` as (backend, precision) pairs."""
    pairs = tuple(tuple(item.split(":", 1)) for item in text.split(",") if item)
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected BACKEND:PRECISION,..., got {text!r}")
    return pairs


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m covid.training.backend``: probe every candidate, or time one (``--probe``)."""
    parser = argparse.ArgumentParser(prog="python -m covid.training.backend",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--probe", action="store_true", help="time this process's backend only")
    parser.add_argument("--model", default="resnet50", choices=MODELS,
                        help="guided: the three-class trainer's own step (its defaults)")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--candidates", type=_candidates, default=CANDIDATES,
                        help="BACKEND:PRECISION,... to time (default: every candidate; bf16 "
                             "emulated in software takes minutes)")
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(_time_training(args.model, args.precision, args.size, args.batch,
                                        args.steps)))
        return
    results = probe(args.model, args.size, args.batch, args.steps, args.candidates)
    print(json.dumps({"results": results, "fastest": fastest(results)}, indent=1))


if __name__ == "__main__":
    main()
