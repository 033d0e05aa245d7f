"""Backend probing and choice, and cross-backend equality of saved models."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from covid.training.backend import _candidates, _without_options, fastest, probe_one

ROOT = Path(__file__).resolve().parents[2]


def test_fastest_picks_the_quickest_working_candidate():
    results = [
        {"backend": "tensorflow", "precision": "float32", "img_per_s": 4.7},
        {"backend": "tensorflow", "precision": "mixed_bfloat16", "img_per_s": 1.0},
        {"backend": "torch", "precision": "float32", "img_per_s": 13.3},
        {"backend": "jax", "precision": "float32", "img_per_s": 0.0, "error": "not installed"},
    ]
    assert fastest(results)["backend"] == "torch"
    with pytest.raises(RuntimeError, match="no Keras backend"):
        fastest([results[-1]])


def test_reexecution_drops_the_choice_it_replaces():
    argv = ["--run", "runs/x", "--backend", "auto", "--precision=auto", "--resume"]
    assert _without_options(argv, ("--backend", "--precision")) == ["--run", "runs/x", "--resume"]


@pytest.mark.parametrize(("tool", "usage"), [("covid.train", "python -m covid.train"),
                                             ("covid.train_lungs", "usage:")])
def test_each_trainer_runs_from_its_one_entry_module(tool, usage):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-m", tool, "--backend", "tensorflow", "--help"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert usage in done.stdout and "--resume" in done.stdout


def test_a_failing_candidate_is_reported_not_raised():
    result = probe_one("no_such_backend", "float32", "unet", 32, 2, 1)
    assert result["img_per_s"] == 0.0
    assert result["error"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unet", "guided"])  # guided: the trainer's own step
def test_probe_times_a_real_backend(model):
    result = probe_one("tensorflow", "float32", model, 32, 2, 1)
    assert result["img_per_s"] > 0, result
    assert result["keras_backend"] == "tensorflow"


def test_candidates_flag_names_backend_and_precision_pairs():
    assert _candidates("torch:float32,tensorflow:mixed_bfloat16") == (
        ("torch", "float32"), ("tensorflow", "mixed_bfloat16"))
    with pytest.raises(argparse.ArgumentTypeError, match="BACKEND:PRECISION"):
        _candidates("torch")


_SAVE_ON_TORCH = """
import sys
import keras, numpy as np
from covid.model.classes import CLASS_NAMES
from covid.model.metadata import ModelMetadata
from covid.model.network import build_model, save_with_metadata
assert keras.backend.backend() == "torch"
keras.utils.set_random_seed(1)
model = build_model(input_size=32)
x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
model.compile(optimizer="adam", loss="categorical_crossentropy")
model.fit(x, np.eye(3)[[0, 1, 2]], epochs=1, verbose=0)
metadata = ModelMetadata(class_names=list(CLASS_NAMES), input_size=32, input_mode="full")
save_with_metadata(model, metadata, sys.argv[1])
np.save(sys.argv[2], np.asarray(model.predict(x, verbose=0)))
np.save(sys.argv[3], x)
"""


@pytest.mark.slow
def test_a_model_trained_on_torch_gives_the_same_outputs_on_tensorflow(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed (requirements-dev.txt has it)")
    from covid.model.network import load_model

    model_file, out_file, x_file = tmp_path / "m.keras", tmp_path / "out.npy", tmp_path / "x.npy"
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_ON_TORCH, str(model_file), str(out_file), str(x_file)],
        env=env, capture_output=True, text=True, cwd=ROOT, check=False, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import keras

    assert keras.backend.backend() == "tensorflow"
    model, _ = load_model(model_file)
    on_tf = np.asarray(model.predict(np.load(x_file), verbose=0))
    on_torch = np.load(out_file)
    assert np.abs(on_tf - on_torch).max() < 1e-4, json.dumps(
        {"tf": on_tf.tolist(), "torch": on_torch.tolist()})
