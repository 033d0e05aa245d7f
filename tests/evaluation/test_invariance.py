"""The invariance check: alterations of a film, and how far they move a model's decision."""

import json

import keras
import numpy as np
import pytest

from covid import invariance
from covid.evaluation.invariance import (
    ALTERATIONS,
    UNALTERED,
    group_names,
    input_changes,
    sample_groups,
    score_altered,
    shifts,
)
from covid.evaluation.scoring import split_side
from covid.explain.inference import Classifier
from covid.model.classes import CLASS_NAMES, COVID, NORMAL, OTHER_PNEUMONIA, index_of
from covid.model.network import LOGITS_LAYER, save_with_metadata
from covid.training.catalogue import Catalogue
from tests.conftest import TINY_LAYER, TINY_SIZE, tiny_metadata_for
from tests.films import three_class_split


def _film(seed: int = 0) -> np.ndarray:
    """A 120 x 100 film: a smooth gradient with texture, grey levels 40-200."""
    rows = np.linspace(40, 200, 120)[:, None] * np.ones((1, 100))
    texture = np.random.default_rng(seed).normal(0, 10, (120, 100))
    return np.clip(rows + texture, 0, 255).astype(np.uint8)


def test_every_alteration_keeps_the_film_and_changes_it_as_named():
    film = _film()
    altered = {name: alter(film, np.random.default_rng(0)) for name, alter in ALTERATIONS.items()}
    for name, out in altered.items():
        assert out.dtype == np.uint8 and out.shape == film.shape, name
        assert not np.array_equal(out, film), f"{name} left the film as it was"
    mean = float(film.mean())
    assert altered["exposure +15%"].mean() == pytest.approx(mean + 0.15 * 255, abs=1)
    assert altered["exposure -15%"].mean() == pytest.approx(mean - 0.15 * 255, abs=1)
    assert altered["gamma 0.75"].mean() > mean > altered["gamma 1.33"].mean()
    assert altered["contrast x0.75"].mean() == pytest.approx(mean, abs=1)
    assert altered["contrast x0.75"].std() == pytest.approx(0.75 * film.std(), rel=0.02)
    assert altered["blur 1/200 of the side"].std() < film.std()
    assert np.abs(altered["JPEG quality 40"].astype(int) - film).mean() < 8
    noisy = ALTERATIONS["noise sd 5"]
    once, again = (noisy(film, np.random.default_rng(1)) for _ in range(2))
    assert np.array_equal(once, again)
    assert not np.array_equal(noisy(film, np.random.default_rng(1)),
                              noisy(film, np.random.default_rng(2)))


def _catalogue(labels: list[int], sources: list[str], ages: list[str]) -> Catalogue:
    names = tuple(f"f{i}.png" for i in range(len(labels)))
    return Catalogue(None, names, np.asarray(labels), tuple(sources), tuple(ages))


def test_groups_are_class_source_and_age_and_sampling_caps_each():
    films = _catalogue([2] * 5 + [2] * 2 + [0] * 3, ["n"] * 7 + ["c"] * 3,
                       ["adult"] * 5 + ["child"] * 2 + ["adult"] * 3)
    assert sorted(set(group_names(films))) == [
        f"{COVID} / c (adult)", f"{NORMAL} / n (adult)", f"{NORMAL} / n (child)"]
    sample = sample_groups(films, 2)
    groups, counts = np.unique(group_names(sample), return_counts=True)
    assert len(groups) == 3 and counts.tolist() == [2, 2, 2]
    assert sample.names == sample_groups(films, 2).names  # seeded


def test_shifts_measure_the_change_of_p_finding_and_of_each_decision():
    films = _catalogue([2, 2, 2, 2, 0, 0], ["n"] * 4 + ["c"] * 2, ["adult"] * 6)
    normal, covid = index_of(CLASS_NAMES, NORMAL), index_of(CLASS_NAMES, COVID)
    clean = np.zeros((6, 3))
    clean[:4, normal] = 5.0  # normals sure of Normal: sent home
    clean[4:, covid] = 5.0
    darker = clean.copy()
    darker[:2, normal], darker[:2, covid] = 0.0, 5.0  # two normals turned into COVID
    out = shifts({UNALTERED: clean, "darker": darker}, films, list(CLASS_NAMES), 1.0, 0.5)
    assert list(out) == ["darker"]
    normals, sick = out["darker"][f"{NORMAL} / n (adult)"], out["darker"][f"{COVID} / c (adult)"]
    assert normals.n == 4 and sick.n == 2
    assert normals.sent_home_unaltered == 1.0 and normals.sent_home == 0.5
    assert normals.flipped == 0.5
    # sure of Normal: P(finding) = 2 / (e^5 + 2); sure of COVID: 1 - 1 / (e^5 + 2)
    assert normals.delta_p_finding == pytest.approx(0.5 * (1 - 3 / (np.exp(5) + 2)))
    assert sick.delta_p_finding == 0.0 and sick.flipped == 0.0 and sick.sent_home == 0.0


def _brightness_reader(weight: float) -> keras.Model:
    """A model whose logits follow the film's mean grey level only (weight 0: blind to it)."""
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 1), name="xray")
    x = keras.layers.Conv2D(1, 1, name=TINY_LAYER, kernel_initializer=keras.initializers.Constant(
        1 / 255), bias_initializer="zeros")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = keras.layers.Dense(3, name=LOGITS_LAYER)(x)
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    model = keras.Model(inputs, probs)
    kernel, bias = np.zeros((1, 3), np.float32), np.zeros(3, np.float32)
    covid, normal = index_of(CLASS_NAMES, COVID), index_of(CLASS_NAMES, NORMAL)
    kernel[0, covid], kernel[0, normal] = weight, -weight
    # balanced at a mean grey of half the range, where the test films lie
    bias[covid], bias[normal] = -weight / 2, weight / 2
    model.get_layer(LOGITS_LAYER).set_weights([kernel, bias])
    return model


def test_a_model_that_reads_the_grey_level_moves_and_a_blind_one_does_not(tmp_path):
    films = split_side(json.loads(three_class_split(tmp_path).read_text()), "val")
    meta = tiny_metadata_for(temperature=1.0, threshold=0.5)
    reader, blind = (Classifier(_brightness_reader(w), meta) for w in (8.0, 0.0))
    logits = score_altered([reader, blind], None, films, ALTERATIONS, chunk=5)
    assert set(logits[0]) == {UNALTERED, *ALTERATIONS}
    assert all(v.shape == (len(films.names), 3) for v in logits[0].values())
    read = shifts(logits[0], films, meta.class_names, 1.0, 0.5)
    for group, shift in read["exposure +15%"].items():
        assert shift.delta_p_finding > 0.05, group
        assert read["exposure -15%"][group].delta_p_finding < -0.05, group
    ignored = shifts(logits[1], films, meta.class_names, 1.0, 0.5)
    for name, row in ignored.items():
        for group, shift in row.items():
            assert abs(shift.delta_p_finding) < 1e-6 and shift.flipped == 0.0, (name, group)


def test_the_command_prints_both_models_tables_and_writes_the_figures(tmp_path, capsys,
                                                                     tiny_lung_file):
    split = three_class_split(tmp_path)
    paths = []
    for name, weight in (("reader", 8.0), ("blind", 0.0)):
        path = tmp_path / name / "model.keras"
        save_with_metadata(_brightness_reader(weight), tiny_metadata_for(1.0, 0.5), path)
        paths.append(path)
    out = tmp_path / "shifts.json"
    invariance.main(["--model", str(paths[0]), "--compare", str(paths[1]), "--split", str(split),
                     "--lung-model", str(tiny_lung_file), "--per-group", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed.count("Mean change of P(any finding)") == 2
    assert f"{OTHER_PNEUMONIA} / " in printed and "| unaltered |" in printed
    figures = json.loads(out.read_text())
    assert len(figures) == 2
    reader = next(v for k, v in figures.items() if "reader" in k)["alterations"]
    assert set(reader) == set(ALTERATIONS)
    assert all(s["n"] == 2 for s in reader["exposure +15%"].values())
    assert min(s["delta_p_finding"] for s in reader["exposure +15%"].values()) > 0.05


def test_input_changes_show_what_each_standardisation_ignores(tmp_path):
    films = split_side(json.loads(three_class_split(tmp_path).read_text()), "val")
    changes = input_changes(None, films, ALTERATIONS, ["none", "standardise-film",
                                                       "equalise-film"], 48, "full", chunk=4)
    assert set(changes) == {"none", "standardise-film", "equalise-film"}
    assert set(changes["none"]) == set(ALTERATIONS)
    assert set(changes["none"]["gamma 0.75"]) == set(group_names(films))
    raw, linear, ranked = (changes[c] for c in ("none", "standardise-film", "equalise-film"))
    for group, moved in raw["exposure +15%"].items():
        assert moved > 20, group
        assert raw["contrast x0.75"][group] > 3, group
        for name in ("exposure +15%", "exposure -15%", "contrast x0.75"):
            assert linear[name][group] < 2, (name, group)
        assert linear["gamma 1.33"][group] > 2 * ranked["gamma 1.33"][group], group


def test_the_command_screens_inputs_without_a_network(tmp_path, capsys, tiny_lung_file):
    split = three_class_split(tmp_path)
    path = tmp_path / "reader" / "model.keras"
    save_with_metadata(_brightness_reader(8.0), tiny_metadata_for(1.0, 0.5), path)
    out = tmp_path / "inputs.json"
    invariance.main(["--model", str(path), "--split", str(split), "--lung-model",
                     str(tiny_lung_file), "--per-group", "2", "--contrasts",
                     "none,window-film", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "input standardised by `none`" in printed and "`window-film`" in printed
    assert "Mean change of P(any finding)" not in printed
    changes = json.loads(out.read_text())["input_changes"]
    assert set(changes) == {"none", "window-film"}
    assert min(changes["none"]["exposure +15%"].values()) > 20
    with pytest.raises(SystemExit):
        invariance.main(["--model", str(path), "--contrasts", "clahe"])
