import json

import numpy as np
import pytest
from PIL import Image

from covid.model.classes import CLASS_NAMES, NORMAL, OTHER_PNEUMONIA
from covid.training import catalogue as cat


def _films(root, n=6):
    rng = np.random.default_rng(0)
    for source in cat.SOURCES:
        folder = root / source.folder
        folder.mkdir(parents=True)
        for i in range(n):
            name = {"radiography-normal": f"Normal-{i * 700 + 1}.jpg"}.get(source.name,
                                                                            f"film-{i}.png")
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / name)


def test_find_films_labels_sources_and_ages(tmp_path):
    _films(tmp_path)
    films = cat.find_films(tmp_path)
    assert len(films.names) == 30
    counts = dict(zip(CLASS_NAMES, np.bincount(films.labels).tolist(), strict=True))
    assert counts == {"COVID": 6, "Other pneumonia": 18, "Normal": 6}
    names = dict(zip(films.names, films.ages, strict=True))
    assert names["covid19-radiography/Normal/Normal-1.jpg"] == "child"
    assert names["covid19-radiography/Normal/Normal-2801.jpg"] == "adult"
    assert set(films.sources) == {s.name for s in cat.SOURCES}
    assert films.paths[0].is_file()


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="covid19-radiography/COVID"):
        cat.find_films(tmp_path)


def test_normal_age_follows_the_numbering():
    assert cat.normal_age("Normal/Normal-1341.jpg") == "child"
    assert cat.normal_age("Normal/Normal-1342.jpg") == "adult"


def test_data_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("COVID_DATA_DIR", str(tmp_path))
    assert cat.data_dir() == tmp_path
    monkeypatch.delenv("COVID_DATA_DIR")
    assert cat.data_dir().parts[-2:] == ("shared", "data")


def test_base_sides_reads_a_two_class_record():
    base = {"root": "../shared/data/covid19-radiography",
            "files": {"train": ["COVID/a.jpg"], "test": ["Normal/b.jpg"]}}
    sides = cat.base_sides(("covid19-radiography/COVID/a.jpg", "covid19-radiography/Normal/b.jpg",
                            "other-pneumonia/viral/c.png"), base)
    assert sides.tolist() == ["train", "test", ""]


def test_covid_qu_ex_test_films_are_other_pneumonias_of_mixed_age(tmp_path):
    _films(tmp_path)
    films = cat.find_films(tmp_path)
    new = [i for i, n in enumerate(films.names)
           if n.startswith("other-pneumonia/covid-qu-ex-test/")]
    assert len(new) == 6
    assert {films.sources[i] for i in new} == {"quex-test-non-covid"}
    assert {films.ages[i] for i in new} == {"mixed"}
    assert {CLASS_NAMES[c] for c in films.labels[new]} == {OTHER_PNEUMONIA}


def test_base_sides_reads_a_three_class_record_and_new_films_are_new():
    base = {"root": "/somewhere/shared/data",
            "files": {"train": ["covid19-radiography/COVID/a.jpg"],
                      "val": ["other-pneumonia/viral/c.png"], "excluded": ["x/d.png"]}}
    sides = cat.base_sides(("covid19-radiography/COVID/a.jpg", "other-pneumonia/viral/c.png",
                            "other-pneumonia/covid-qu-ex-test/e.jpg", "x/d.png"), base)
    assert sides.tolist() == ["train", "val", "", ""]


def test_new_films_follow_their_group_and_bridges_are_left_out():
    labels = np.array([0, 2, 1, 1, 1, 1])
    groups = np.array([0, 1, 0, 2, 3, 3])
    old = np.array(["test", "train", "", "", "", ""], dtype=object)
    sides = cat.assign_sides(labels, groups, old)
    assert sides[0] == "test" and sides[1] == "train"  # old films keep their sides
    assert sides[2] == "test"  # joins the old film of its group
    assert sides[4] == sides[5] != ""  # a new group stays together
    bridged = cat.assign_sides(labels, np.array([0, 0, 1, 2, 0, 3]), old.copy())
    assert bridged[4] == ""  # its group holds old films of two sides
    assert bridged[0] == "test" and bridged[1] == "train"


def test_split_record_round_trip(tmp_path):
    _films(tmp_path)
    films = cat.find_films(tmp_path)
    split = cat.make_split(films, None, cache_dir=tmp_path / "cache")
    assert sum(len(v) for v in split.values()) == len(films.names)
    record = cat.split_record(films, split)
    back = cat.catalogue_side(record, "train")
    assert back.names == films.subset(split["train"]).names
    assert (back.labels == films.labels[split["train"]]).all()
    assert (tmp_path / "cache" / "phash3.json").exists()
    again = cat.make_split(films, None, cache_dir=tmp_path / "cache")
    assert all((again[k] == split[k]).all() for k in split)


def _film(seed: int, size: int = 96) -> np.ndarray:
    """A synthetic 'film': smooth random blobs, distinct per seed."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 6)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _write(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_near_duplicates_grouped_and_distinct_films_not(tmp_path):
    base = _film(1, 224)
    brighter = (base.astype(float) * 0.85 + 20).astype(np.uint8)  # re-contrasted copy
    cropped = np.asarray(Image.fromarray(base[2:-2, 2:-2]).resize((224, 224)))
    paths = [
        _write(tmp_path / "a.png", base),
        _write(tmp_path / "b.png", brighter),
        _write(tmp_path / "c.png", cropped),
    ] + [_write(tmp_path / f"other{i}.png", _film(100 + i, 224)) for i in range(8)]
    groups = cat.group_near_duplicates(cat.perceptual_hashes(tuple(paths)))
    assert groups[0] == groups[1] == groups[2]
    assert len(set(groups[3:])) == 8
    assert groups[0] not in set(groups[3:])


def test_split_keeps_groups_whole_is_stratified_and_reproducible():
    rng = np.random.default_rng(0)
    groups = np.arange(1200) // 3  # triples of near-duplicates
    labels = np.repeat(rng.integers(0, 4, 400) != 0, 3).astype(int)  # ~25% class 0, one a group
    split = cat.split_indices(labels, groups, seed=7)
    again = cat.split_indices(labels, groups, seed=7)
    other = cat.split_indices(labels, groups, seed=8)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not all(np.array_equal(split[k], other[k]) for k in split)
    sides = {k: set(groups[v]) for k, v in split.items()}
    assert not sides["train"] & sides["val"]
    assert not sides["train"] & sides["test"]
    assert not sides["val"] & sides["test"]
    assert sum(len(v) for v in split.values()) == len(labels)
    for side, index in split.items():
        share = len(index) / len(labels)
        assert abs(share - {"train": 0.7, "val": 0.15, "test": 0.15}[side]) < 0.05
        assert abs(labels[index].mean() - labels.mean()) < 0.06


def test_real_split_never_straddles_a_near_duplicate_group(shared_data_dir, tmp_path):
    radiography = tuple(s for s in cat.SOURCES
                        if s.folder.startswith(f"{shared_data_dir.name}/"))
    films = cat.find_films(shared_data_dir.parent, radiography)
    rng = np.random.default_rng(0)
    keep = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(films.labels == c), 600, replace=False)
        for c in np.unique(films.labels)
    ]))
    sub = films.subset(keep)
    split = cat.make_split(sub, None, seed=0, cache_dir=tmp_path)
    assert len(split["excluded"]) == 0  # no earlier split: no group can straddle one
    groups = cat.group_near_duplicates(cat.perceptual_hashes(sub.paths))
    side_of = np.empty(len(sub.names), dtype=object)
    for side, index in split.items():
        side_of[index] = side
    for g in np.unique(groups):
        assert len(set(side_of[groups == g])) == 1
    cached = json.loads((tmp_path / "phash3.json").read_text())
    assert len(cached) == len(sub.names)


def test_the_catalogue_reads_class_folders_by_class_name():
    assert set(cat.QUEX_CLASS_FOLDERS) == set(CLASS_NAMES)
    normal = [s for s in cat.SOURCES if CLASS_NAMES[s.label] == NORMAL]
    assert [s.folder for s in normal] == ["covid19-radiography/Normal"]
