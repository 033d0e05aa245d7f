import json

import numpy as np
import pytest

from covid.evaluation import cli
from covid.evaluation.artefacts import artefact_paths
from covid.evaluation.evaluate import evaluate
from covid.evaluation.scoring import Options, split_side
from covid.evaluation.ship import set_gradcam_layer, ship
from covid.model.metadata import read_metadata
from covid.model.network import load_model, save_with_metadata
from covid.training.catalogue import CLASS_NAMES, SOURCES
from tests.films import three_class_split


def _three_class_model(tmp_path, tiny_cnn_factory, tiny_metadata):
    tiny_metadata.class_names = list(CLASS_NAMES)
    path = tmp_path / "m" / "model.keras"
    save_with_metadata(tiny_cnn_factory(n_classes=3), tiny_metadata, path)
    return path


def test_a_split_record_from_another_machine_reads_from_the_shared_data(tmp_path,
                                                                        monkeypatch):
    record = json.loads(three_class_split(tmp_path).read_text())
    monkeypatch.setenv("COVID_DATA_DIR", str(tmp_path / "data"))
    here = split_side(record, "test")
    record["root"] = "/elsewhere/data"  # absent on this machine
    moved = split_side(record, "test")
    assert moved.root == here.root == tmp_path / "data"
    assert moved.names == here.names and moved.labels.tolist() == here.labels.tolist()
    assert all(path.is_file() for path in moved.paths)


@pytest.mark.slow
def test_evaluate_writes_three_class_figures(tmp_path, tiny_cnn_factory, tiny_metadata,
                                             tiny_model_file):
    model = _three_class_model(tmp_path, tiny_cnn_factory, tiny_metadata)
    split = three_class_split(tmp_path)
    metrics = evaluate(model, Options(split, compare=tiny_model_file,
                                      cache_dir=tmp_path / "cache"))
    meta = read_metadata(model)
    assert meta.metrics == json.loads(json.dumps(metrics))
    assert meta.threshold == metrics["threshold"] and meta.temperature > 0
    films = 4 * len(SOURCES)  # three_class_split: four test films per source
    assert metrics["n"] == films
    assert np.array(metrics["confusion3"]["matrix"]).sum() == films
    assert set(metrics["auc_per_class"]) == set(CLASS_NAMES)
    assert any(k.endswith("/ Other pneumonia") for k in metrics["by_source"])
    previous = metrics["comparison"]["previous"]
    assert previous["n"] == films  # the previous model's AUCs are those of its own classes
    assert set(previous["auc_per_class"]) == set(read_metadata(tiny_model_file).class_names)
    paths = artefact_paths(model)
    for key in ("split", "scores", "evaluation", "roc_png", "reliability_png"):
        assert paths[key].exists(), key
    rows = paths["scores"].read_text().splitlines()
    assert rows[0].startswith("file,true,source,age,label,p_covid,p_other_pneumonia,p_normal")
    assert len(rows) == films + 1
    curves = json.loads(paths["evaluation"].read_text())["curves"]
    assert set(curves["roc_per_class"]) == set(CLASS_NAMES)
    target = tmp_path / "shipped" / "covid.keras"
    ship(model, target)
    load_model(target)  # the SHA still matches after calibration and copying


@pytest.mark.slow
def test_the_gate_refuses_an_unproven_model_and_ship_carries_its_ood_statistics(
        tmp_path, tiny_cnn_factory, tiny_metadata, tiny_model_file):
    from covid.evaluation import ood_fit
    from covid.model.ood_stats import ood_path, read_model_stats

    model = _three_class_model(tmp_path, tiny_cnn_factory, tiny_metadata)
    split = three_class_split(tmp_path)
    assert ood_fit.main(["--model", str(model), "--split", str(split), "--components", "4",
                         "--max-flag-rate", "0.25"]) == 0
    target = tmp_path / "shipped" / "covid.keras"
    with pytest.raises(SystemExit) as refused:
        cli.main(["--model", str(model), "--split", str(split), "--masks",
                           str(tmp_path / "no-masks"), "--ship", str(target)])
    assert refused.value.code == 1 and not target.exists()
    meta = read_metadata(model)
    # the test figures count what the model's own OOD statistics flag, per true class
    assert set(meta.metrics["ood_flagged"]) == set(CLASS_NAMES)
    assert meta.metrics["ood_flagged"] == meta.extra["ood"]["test_flagged"]
    gate = meta.metrics["ship_gate"]
    assert gate["split"] == "val" and gate["ship"] is False and gate["shipped"] is None
    assert "COVID map: peak inside the lungs: not measured for the candidate" in gate["reasons"]

    ship(model, target)
    stats = read_model_stats(target)  # the statistics came along, renamed, their SHA intact
    assert read_metadata(target).extra["ood"]["file"] == ood_path(target).name
    assert stats is not None and stats.threshold == meta.extra["ood"]["threshold"]


def test_layer_records_an_existing_layer_and_refuses_a_typo(tmp_path, tiny_cnn_factory,
                                                            tiny_metadata):
    model = _three_class_model(tmp_path, tiny_cnn_factory, tiny_metadata)
    set_gradcam_layer(model, "conv1")
    assert read_metadata(model).gradcam_layer == "conv1"
    load_model(model)  # the .keras file is untouched: its SHA-256 still matches
    with pytest.raises(SystemExit, match="no layer named 'conv9'"):
        set_gradcam_layer(model, "conv9")
    assert read_metadata(model).gradcam_layer == "conv1"


def test_val_only_tries_a_layer_and_writes_nothing(tmp_path, tiny_cnn_factory, tiny_metadata,
                                                    capsys):
    model = _three_class_model(tmp_path, tiny_cnn_factory, tiny_metadata)
    split = three_class_split(tmp_path, per_source=2)
    before = {p: p.read_bytes() for p in model.parent.iterdir()}
    args = ["--model", str(model), "--split", str(split), "--masks", str(tmp_path / "none"),
            "--cache-dir", str(tmp_path / "cache"), "--val-only"]
    cli.main([*args, "--layer", "conv1"])
    figures = json.loads(capsys.readouterr().out)
    assert figures["n"] == 2 * len(SOURCES) and "specificity" in figures
    with pytest.raises(SystemExit, match="no layer named 'conv9'"):
        cli.main([*args, "--layer", "conv9"])
    assert {p: p.read_bytes() for p in model.parent.iterdir()} == before  # nothing written
    assert read_metadata(model).gradcam_layer == tiny_metadata.gradcam_layer != "conv1"
