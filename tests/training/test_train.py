import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covid.model.metadata import read_metadata
from covid.model.network import load_model
from covid.training import train
from covid.training.catalogue import CLASS_NAMES, SOURCES

ROOT = Path(__file__).resolve().parents[2]


def _data(root, per_source=8):
    rng = np.random.default_rng(0)
    for source in SOURCES:
        folder = root / source.folder
        folder.mkdir(parents=True)
        for i in range(per_source):
            pixels = rng.uniform(0, 120, (80, 80)).astype(np.uint8)
            pixels[20:60, 12:34] = pixels[20:60, 46:68] = 30  # dark lung-like fields
            if source.label == 0:
                pixels[30:40, 20:30] = 230
            Image.fromarray(pixels).save(folder / f"Normal-{i + 2000}.png")
            if folder.name == "images":  # COVID-QU-Ex: radiologists' masks beside the films
                lungs = np.zeros((80, 80), np.uint8)
                lungs[20:60, 12:34] = lungs[20:60, 46:68] = 255
                for kind, mask in (("lungs", lungs), ("infection", np.zeros_like(lungs))):
                    (folder.parent / kind).mkdir(exist_ok=True)
                    Image.fromarray(mask).save(folder.parent / kind / f"Normal-{i + 2000}.png")


def test_parse_stages():
    stages = train.parse_stages("112:2,224:1")
    assert [(s.size, s.epochs) for s in stages] == [(112, 2), (224, 1)]
    assert train.stage_of_epoch(stages, 1).size == 112
    assert train.stage_of_epoch(stages, 2).size == 224
    with pytest.raises(ValueError, match="SIZE:EPOCHS"):
        train.parse_stages("224")


def _argv(tmp_path, stages, *extra) -> list[str]:
    return [
        "--data", str(tmp_path / "data"), "--run", str(tmp_path / "run"), "--stages", stages,
        "--steps-per-epoch", "2", "--batch-size", "4", "--val-limit", "9", "--warmup-steps", "1",
        "--precision", "float32", "--cache-dir", str(tmp_path / "cache"), "--bn-batches", "1",
        "--export-bn-batches", "2",
        "--base-split", str(tmp_path / "none.json"), *extra,
    ]


def _args(tmp_path, stages, *extra):
    return train.parse_args(_argv(tmp_path, stages, *extra))


def _train_on_torch(tmp_path, stages: str) -> Path:
    """``python -m covid.train --backend torch`` (the fastest trainer on some CPUs)."""
    argv = [*_argv(tmp_path, stages), "--backend", "torch"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "covid.train", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on torch with float32" in done.stderr
    return tmp_path / "run" / "model.keras"


@pytest.mark.slow(seconds=300)
def test_training_end_to_end_and_resume(tmp_path):
    """Starts on PyTorch, resumes and exports on TensorFlow: checkpoints cross backends."""
    _data(tmp_path / "data")
    exported = _train_on_torch(tmp_path, "64:1")
    model, meta = load_model(exported)
    assert meta.class_names == list(CLASS_NAMES) and meta.version == "4"
    assert meta.input_size == 64 and meta.gradcam_layer == train.CAM_LAYER
    assert meta.map_grid == [4, 4] and meta.input_contrast == "equalise"  # stride 16
    assert meta.recipe["images_seen"] == 8 and meta.recipe["initialised_from"] == "random"
    assert meta.recipe["lung_guidance"]["cam_weight"] == 1.0
    assert meta.recipe["export_bn_batches"] == 2
    assert meta.recipe["lung_guidance"]["map_loss_by_epoch"] == ["1-1: absolute + peak x0.5"]
    probs = model.predict(np.zeros((1, 64, 64, 1), "float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
    assert all(w.dtype == "float32" for w in model.weights)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 1 and state["history"][0]["images_seen"] == 8
    assert {"val_auc_covid", "val_lung_share", "val_peak_in_lungs", "img_per_s"} <= set(
        state["history"][0])
    assert (tmp_path / "run" / "history.png").stat().st_size > 1000
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert set(split["files"]) >= {"train", "val", "test"}

    # a resumed run continues from the checkpoint, with its optimizer step count
    exported = train.train(_args(tmp_path, "64:1,64:1", "--resume"))
    _, meta = load_model(exported)
    history = meta.recipe["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    assert meta.recipe["images_seen"] == 16
    runs = meta.recipe["invocations"]
    assert [r["epochs"] for r in runs] == [[1, 1], [2, 2]] and "--resume" in runs[1]["argv"]
    assert [r["backend"] for r in runs] == ["torch", "tensorflow"]

    # an unfinished run exports its checkpoint at the size it last trained at
    exported = train.train(_args(tmp_path, "64:1,64:1,96:1", "--export-now"))
    _, meta = load_model(exported)
    assert meta.input_size == 64 and meta.recipe["images_seen"] == 16
    assert meta.recipe["images_planned"] == 24 and meta.version == "4-interim"
    assert json.loads((tmp_path / "run" / "state.json").read_text())["epoch"] == 2


def test_initialise_names_the_model_not_only_its_path(tiny_model_file, tiny_cnn_factory):
    meta = read_metadata(tiny_model_file)
    described = train.initialise(tiny_cnn_factory(), tiny_model_file)
    assert meta.sha256 in described and f"version {meta.version}" in described
    assert described.startswith(meta.name) and str(tiny_model_file) in described
    assert train.initialise(tiny_cnn_factory(), None) == "random"


def test_without_run_the_trainer_starts_only_a_new_run(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "DEFAULT_RUN", tmp_path / "v4")
    args = train.parse_args(["--resume"])
    assert args.run == tmp_path / "v4" and not args.run_named
    train.check_run_folder(args)  # nothing there yet: a new run may start
    args.run.mkdir()
    train.check_run_folder(args)  # an empty folder holds no run
    (args.run / "checkpoint.weights.h5").write_bytes(b"")  # killed before its first state
    with pytest.raises(SystemExit, match="already holds a run; name it with --run"):
        train.check_run_folder(args)
    (args.run / "state.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a run; name it with --run"):
        train.train(args)  # refused before anything is read or written
    assert sorted(p.name for p in args.run.iterdir()) == ["checkpoint.weights.h5", "state.json"]
    assert (args.run / "state.json").read_text() == "{}"
    named = train.parse_args(["--run", str(args.run), "--resume"])
    train.check_run_folder(named)  # named: it may resume


def test_each_invocation_records_its_flags_their_values_and_epochs():
    state = train.TrainState(epoch=3)
    train.note_invocation(state, train.parse_args(["--run", "r", "--resume"]))
    for _ in range(2):
        state.epoch += 1
        train.note_epoch(state)
    train.note_invocation(state, train.parse_args(["--run", "r", "--resume", "--lr", "3e-4"]))
    state.epoch += 1
    train.note_epoch(state)
    first, second = state.invocations
    assert first["argv"] == ["--run", "r", "--resume"] and first["epochs"] == [4, 5]
    assert first["options"]["lr"] == 1e-3  # the default that ran, though not typed
    assert second["options"]["lr"] == 3e-4 and second["epochs"] == [6, 6]
    assert first["options"]["run"] == "r" and json.loads(json.dumps(state.invocations))
