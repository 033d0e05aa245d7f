import math

import numpy as np
import pytest

from covid.explain.cam_stats import (
    REGIONS,
    area_shares,
    energy_shares,
    region_masks,
    summarise_shares,
)


def test_central_map_puts_all_energy_in_the_centre():
    cam = np.zeros((100, 100))
    cam[40:60, 40:60] = 1.0
    shares = energy_shares(cam)
    assert shares["central"] == pytest.approx(1.0)
    assert shares["border"] == pytest.approx(0.0) and shares["corners"] == pytest.approx(0.0)


@pytest.mark.parametrize("rows, cols", [(slice(0, 6), slice(0, 6)),
                                        (slice(-6, None), slice(-6, None)),
                                        (slice(0, 6), slice(-6, None))])
def test_corner_map_is_all_corner_and_border(rows, cols):
    cam = np.zeros((64, 48), np.float32)
    cam[rows, cols] = 0.7
    shares = energy_shares(cam)
    assert shares["corners"] == pytest.approx(1.0)
    assert shares["border"] == pytest.approx(1.0) and shares["central"] == pytest.approx(0.0)


def test_uniform_map_gives_area_fractions():
    shares = energy_shares(np.full((100, 100), 0.3))
    assert shares == pytest.approx({"central": 0.7 * 0.8, "border": 1 - 0.56, "corners": 0.09})
    assert shares == pytest.approx(area_shares(100, 100))
    odd = energy_shares(np.ones((7, 13)))
    assert odd == pytest.approx(area_shares(7, 13))
    assert odd["central"] + odd["border"] == pytest.approx(1.0)


def test_zero_map_gives_zeros_not_nan():
    shares = energy_shares(np.zeros((7, 7)))
    assert shares == dict.fromkeys(REGIONS, 0.0)
    assert not any(math.isnan(v) for v in shares.values())


def test_masks_nest_and_bad_maps_are_refused():
    masks = region_masks(50, 40)
    assert not (masks["corners"] & masks["central"]).any()
    assert (masks["central"] ^ masks["border"]).all()
    for bad in (np.ones(5), np.zeros((0, 3)), np.full((4, 4), np.nan), -np.ones((4, 4))):
        with pytest.raises(ValueError):
            energy_shares(bad)


def test_summary_overall_per_class_and_per_prediction():
    central = {"central": 1.0, "border": 0.0, "corners": 0.0}
    corner = {"central": 0.0, "border": 1.0, "corners": 1.0}
    empty = dict.fromkeys(REGIONS, 0.0)
    summary = summarise_shares([central, corner, central, empty], labels=[0, 0, 1, 1],
                               class_names=["COVID", "Normal"], predicted=[0, 1, 1, 1])
    assert summary["overall"] == pytest.approx(
        {"n": 4, "n_empty": 1, "central": 2 / 3, "border": 1 / 3, "corners": 1 / 3})
    assert summary["by_class"]["COVID"] == pytest.approx(
        {"n": 2, "n_empty": 0, "central": 0.5, "border": 0.5, "corners": 0.5})
    assert summary["by_class"]["Normal"]["central"] == pytest.approx(1.0)
    assert summary["by_predicted"]["COVID"]["central"] == pytest.approx(1.0)
    assert summary["by_predicted"]["Normal"]["n"] == 3
    alone = summarise_shares([empty], labels=[1], class_names=["COVID", "Normal"])
    assert "by_predicted" not in alone
    assert alone["by_class"]["COVID"] == {"n": 0, "n_empty": 0, "central": None,
                                          "border": None, "corners": None}
    with pytest.raises(ValueError):
        summarise_shares([central], labels=[2], class_names=["COVID", "Normal"])
    with pytest.raises(ValueError):
        summarise_shares([central], labels=[0, 1], class_names=["COVID", "Normal"])
