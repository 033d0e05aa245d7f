"""From films to classifier inputs: a focused film, or the whole film where no lungs were found."""

import numpy as np
import pytest

from covid.inputs.preprocess import LungBox, lung_box, lung_focus
from covid.model.focus import focus_film, focus_films
from covid.model.lungs import LungSegmentation, LungSegmenter, lung_field_problem


def _film(shape=(120, 100)) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (40 + rows + cols // 2).astype(np.uint8)


def _segmentation(mask: np.ndarray) -> LungSegmentation:
    return LungSegmentation(mask, lung_box(mask), lung_field_problem(mask))


def test_a_film_with_lungs_is_focused_as_the_mode_says(plant_lungs):
    film = _film()
    lungs = _segmentation(plant_lungs.mask(film.shape))
    done = focus_film(film, lungs, 32, "crop")
    x, box = lung_focus(film, lungs.mask, 32, "crop")
    assert not done.fallback and done.lungs is lungs
    np.testing.assert_array_equal(done.x, x)
    assert done.box == box != LungBox.whole(film.shape)


def test_without_lungs_a_lung_focused_mode_falls_back_to_the_whole_film():
    film = _film()
    empty = _segmentation(np.zeros(film.shape, bool))
    for lungs in (empty, None):
        done = focus_film(film, lungs, 32, "crop+attenuate")
        assert done.fallback and done.lungs is lungs
        np.testing.assert_array_equal(done.x, lung_focus(film, None, 32, "full")[0])
        assert done.box == LungBox.whole(film.shape)
    assert "no lung fields" in empty.problem  # what the out-of-distribution gate is told


def test_the_whole_film_mode_needs_no_lungs():
    film = _film()
    done = focus_film(film, None, 32, "full")
    assert not done.fallback and done.lungs is None and done.x.shape == (32, 32, 1)


def test_a_batch_is_segmented_then_focused_one_result_per_film(tiny_lung_file, plant_lungs):
    segmenter = LungSegmenter.from_file(tiny_lung_file)
    films = [_film(), _film((90, 140))]
    pair = plant_lungs.mask_for  # two plausible fields; none in the second film
    plant_lungs.mask_for = lambda shape: (np.zeros(shape, bool) if shape == (90, 140)
                                          else pair(shape))
    done = focus_films(films, 32, "crop", segmenter)
    assert [d.fallback for d in done] == [False, True]
    assert all(d.x.shape == (32, 32, 1) and d.x.dtype == np.uint8 for d in done)
    assert [d.lungs.mask.shape for d in done] == [f.shape for f in films]
    with pytest.raises(ValueError, match="needs the lung segmenter"):
        focus_films(films, 32, "crop", None)
    assert [d.lungs for d in focus_films(films, 32, "full", None)] == [None, None]


def test_the_contrast_travels_with_the_film_and_its_fallback(plant_lungs):
    film = _film()
    lungs = _segmentation(plant_lungs.mask(film.shape))
    done = focus_film(film, lungs, 32, "crop", contrast="equalise")
    np.testing.assert_array_equal(
        done.x, lung_focus(film, lungs.mask, 32, "crop", contrast="equalise")[0])
    assert not np.array_equal(done.x, focus_film(film, lungs, 32, "crop").x)
    fallback = focus_film(film, None, 32, "crop", contrast="equalise")
    np.testing.assert_array_equal(
        fallback.x, lung_focus(film, None, 32, "full", contrast="equalise")[0])
