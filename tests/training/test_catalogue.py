import numpy as np
import pytest
from PIL import Image

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
    assert np.bincount(films.labels).tolist() == [6, 18, 6]
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
    assert {films.ages[i] for i in new} == {"mixed"} and set(films.labels[new]) == {1}


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
