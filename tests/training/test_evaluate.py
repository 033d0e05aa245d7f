import json

import numpy as np
import pytest
from PIL import Image

from covid.model.classifier import load_model, read_metadata
from covid.training.evaluate import artefact_paths, evaluate, ship, summarise


def _logits(rng, labels, separation):
    z = rng.normal(0, 1, len(labels)) + np.where(labels == 0, separation, -separation)
    return np.stack([z, -z], axis=1) * 2.5  # overconfident by design


def test_summarise_fits_on_val_and_measures_on_test():
    rng = np.random.default_rng(0)
    val_y = rng.integers(0, 2, 3000)
    test_y = rng.integers(0, 2, 3000)
    out = summarise(_logits(rng, val_y, 1.5), val_y, _logits(rng, test_y, 1.5), test_y)
    m = out["metrics"]
    assert out["temperature"] > 1.5  # overconfidence detected
    assert m["ece_after_scaling"] < m["ece_before_scaling"]
    assert m["ece_after_scaling"] < 0.03
    assert m["sensitivity"] == pytest.approx(0.98, abs=0.015)  # chosen on val, holds on test
    assert m["auc_ci95"][0] < m["auc"] < m["auc_ci95"][1]
    c = m["confusion"]
    assert c["tp"] + c["fn"] == int((test_y == 0).sum())
    assert c["tn"] + c["fp"] == int((test_y == 1).sum())


def test_summarise_ignores_test_labels_for_calibration():
    rng = np.random.default_rng(2)
    val_y = rng.integers(0, 2, 500)
    val_z = _logits(rng, val_y, 1.0)
    test_y = rng.integers(0, 2, 500)
    a = summarise(val_z, val_y, _logits(rng, test_y, 1.0), test_y)
    b = summarise(val_z, val_y, _logits(rng, test_y, 3.0), 1 - test_y)
    assert a["temperature"] == b["temperature"]
    assert a["threshold"] == b["threshold"]


def test_evaluate_writes_metadata_and_artefacts(tiny_model_file, tmp_path):
    rng = np.random.default_rng(0)
    files = {"train": [], "val": [], "test": []}
    for side in ("val", "test"):
        for name in ("COVID", "Normal"):
            for i in range(6):
                rel = f"{name}/{side}-{i}.png"
                (tmp_path / "data" / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (70, 70), dtype=np.uint8)).save(
                    tmp_path / "data" / rel)
                files[side].append(rel)
    model = tmp_path / "m" / "model.keras"
    model.parent.mkdir()
    model.write_bytes(tiny_model_file.read_bytes())
    model.with_suffix(".json").write_text(tiny_model_file.with_suffix(".json").read_text())
    split = tmp_path / "m" / "split.json"
    split.write_text(json.dumps({"root": str(tmp_path / "data"), "files": files}))
    summary = evaluate(model, split)
    meta = read_metadata(model)
    assert meta.temperature == summary["temperature"]
    assert meta.metrics["n"] == 12
    energy = json.loads(artefact_paths(model)["evaluation"].read_text())["cam_energy"]
    assert energy["overall"]["n"] == 12
    assert set(energy["per_class"]) == {"COVID", "Normal"}
    assert 0 <= energy["overall"]["central"] <= 1
    paths = artefact_paths(model)
    for key in ("split", "scores", "evaluation", "roc_png", "reliability_png"):
        assert paths[key].exists(), key
    rows = paths["scores"].read_text().splitlines()
    assert rows[0] == "file,label,p_covid,logit_covid,logit_normal,lung_evidence"
    assert len(rows) == 13
    shares = [row.rsplit(",", 1)[1] for row in rows[1:]]
    assert all(share == "" or 0.0 <= float(share) <= 1.0 for share in shares)
    target = tmp_path / "shipped" / "covid.keras"
    ship(model, target)
    load_model(target)  # the SHA still matches after calibration and copying
    assert artefact_paths(target)["scores"].exists()
