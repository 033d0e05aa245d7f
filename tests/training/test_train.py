import json

import numpy as np
import pytest
from PIL import Image

from covid.model.classifier import load_model
from covid.training import train


def _dataset(root, per_class=24):
    rng = np.random.default_rng(0)
    for c, name in enumerate(("COVID", "Normal")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.uniform(0, 120, (80, 80)).astype(np.uint8)
            if c == 0:
                pixels[20:40, 20:40] = 230
            Image.fromarray(pixels).save(root / name / f"{name}-{i}.png")


def test_parse_stages():
    stages = train.parse_stages("112:2,224:1")
    assert [(s.size, s.epochs) for s in stages] == [(112, 2), (224, 1)]
    assert train.stage_of_epoch(stages, 1).size == 112
    assert train.stage_of_epoch(stages, 2).size == 224
    with pytest.raises(ValueError, match="SIZE:EPOCHS"):
        train.parse_stages("224")


@pytest.mark.slow
def test_training_end_to_end_on_a_tiny_subset(tmp_path):
    _dataset(tmp_path / "data")
    run = tmp_path / "run"
    exported = train.train(train.parse_args([
        "--data", str(tmp_path / "data"), "--run", str(run), "--stages", "64:1",
        "--steps-per-epoch", "2", "--batch-size", "4", "--val-limit", "16",
        "--warmup-steps", "1", "--precision", "float32", "--cache-dir", str(tmp_path / "cache"),
    ]))
    model, meta = load_model(exported)
    assert meta.input_size == 64
    assert meta.recipe["epochs_run"] == 1
    assert sum(meta.splits["train"].values()) > 0
    probs = model.predict(np.zeros((1, 64, 64, 1), "float32"), verbose=0)
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-5)
    assert all(w.dtype == "float32" for w in model.weights)
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert (run / "history.png").stat().st_size > 1000
    assert (run / "checkpoint.keras").exists()
    split = json.loads((run / "split.json").read_text())
    assert set(split["files"]) == {"train", "val", "test"}
