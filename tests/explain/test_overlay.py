import matplotlib
import numpy as np
import pytest

from covid.explain.overlay import (
    colormap_names,
    contour_lines,
    contour_overlay,
    heatmap_only,
    overlay_heatmap,
)

H, W = 48, 64


def _xray(shape=(H, W)):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _cone(shape=(H, W), center=(24, 30), radius=16.0):
    """A map falling linearly from 1 at ``center`` to 0 at ``radius`` pixels."""
    rows, cols = np.indices(shape)
    distance = np.hypot(rows - center[0], cols - center[1])
    return np.clip(1.0 - distance / radius, 0.0, 1.0).astype(np.float32), distance


@pytest.mark.parametrize("shape", [(H, W), (H, W, 1), (H, W, 3)])
def test_overlay_is_uint8_rgb_of_the_image_size(shape):
    out = overlay_heatmap(_xray(shape), np.random.default_rng(1).random((7, 7)))
    assert out.dtype == np.uint8
    assert out.shape == (H, W, 3)


def test_opacity_zero_returns_the_image():
    image = _xray()
    out = overlay_heatmap(image, _cone()[0], opacity=0.0)
    np.testing.assert_array_equal(out, np.repeat(image[:, :, None], 3, axis=2))


def test_opacity_one_returns_the_colormapped_map():
    cam = _cone()[0]
    out = overlay_heatmap(_xray(), cam, colormap="inferno", opacity=1.0, follow_map=False)
    expected = matplotlib.colormaps["inferno"](cam, bytes=True)[:, :, :3]
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out, heatmap_only(cam, "inferno", (H, W)))


def test_half_opacity_is_the_mean_of_image_and_colour():
    image, cam = _xray(), _cone()[0]
    colour = heatmap_only(cam, "jet", (H, W)).astype(int)
    out = overlay_heatmap(image, cam, opacity=0.5, follow_map=False).astype(int)
    assert np.abs(out - (image[:, :, None].astype(int) + colour) / 2).max() <= 0.5


def test_by_default_the_opacity_follows_the_map_and_leaves_cold_film_untouched():
    image, (cam, _) = _xray(), _cone()
    colour = heatmap_only(cam, "jet", (H, W)).astype(np.float64)
    out = overlay_heatmap(image, cam, opacity=0.8).astype(np.float64)
    grey = np.repeat(image[:, :, None], 3, axis=2).astype(np.float64)
    cold = cam == 0.0
    np.testing.assert_array_equal(out[cold], grey[cold])  # the film, as it is
    alpha = 0.8 * cam[:, :, None]
    np.testing.assert_allclose(out, (1 - alpha) * grey + alpha * colour, atol=0.5)
    flat = overlay_heatmap(image, cam, opacity=0.8, follow_map=False).astype(np.float64)
    assert np.abs(out - grey)[cold].sum() == 0 < np.abs(flat - grey)[cold].sum()


def test_small_map_is_resized_to_the_image():
    cam = np.zeros((4, 4), np.float32)
    cam[:2, :2] = 1.0  # hot top-left quadrant
    out = heatmap_only(cam, "hot", (H, W))
    assert out.shape == (H, W, 3)
    assert out[: H // 4, : W // 4].mean() > out[-H // 4 :, -W // 4 :].mean() + 100
    assert heatmap_only(cam, "hot", 16).shape == (16, 16, 3)
    assert heatmap_only(cam, "hot").shape == (4, 4, 3)


@pytest.mark.parametrize("opacity", [-0.1, 1.01])
def test_opacity_out_of_range_is_rejected(opacity):
    with pytest.raises(ValueError, match="opacity"):
        overlay_heatmap(_xray(), _cone()[0], opacity=opacity)


@pytest.mark.parametrize(
    ("image", "cam", "colormap"),
    [
        (_xray(), _cone()[0], "no_such_map"),
        (_xray().astype(np.float32), _cone()[0], "jet"),
        (_xray((H, W, 2)), _cone()[0], "jet"),
        (_xray((2, H, W, 1)), _cone()[0], "jet"),
        (_xray(), np.zeros((1, 4, 4)), "jet"),
        (_xray(), np.full((4, 4), np.nan), "jet"),
    ],
)
def test_bad_arguments_are_rejected(image, cam, colormap):
    with pytest.raises(ValueError):
        overlay_heatmap(image, cam, colormap=colormap)


def test_colormap_names_are_valid_matplotlib_maps():
    names = colormap_names()
    assert names[0] == "jet"
    assert {"inferno", "viridis", "turbo"} <= set(names)
    for name in names:
        assert name in matplotlib.colormaps
        assert heatmap_only(_cone()[0], name).shape == (H, W, 3)
    names.append("mutated")
    assert "mutated" not in colormap_names()


def test_contour_lines_follow_the_iso_level():
    cam = _cone()[0]
    lines = contour_lines(cam, 0.5)
    assert len(lines) == 1
    cols, rows = lines[0][:, 0], lines[0][:, 1]
    np.testing.assert_allclose(np.hypot(rows - 24, cols - 30), 8.0, atol=0.5)


def test_contour_overlay_changes_only_pixels_near_the_contours():
    image, (cam, distance) = _xray(), _cone()
    out = contour_overlay(image, cam, levels=(0.5, 0.75), color=(255, 0, 255))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    changed = np.any(out != image[:, :, None], axis=2)
    # iso-lines at 0.5 and 0.75 of the cone are circles of radius 8 and 4
    near = (np.abs(distance - 8.0) <= 1.5) | (np.abs(distance - 4.0) <= 1.5)
    assert changed.sum() > 2 * np.pi * (8 + 4)  # both circles drawn, roughly closed
    assert not np.any(changed & ~near)
    assert np.all(out[changed] == (255, 0, 255))


def test_contour_overlay_uses_one_colour_per_level_and_resizes_the_map():
    image = _xray((H, W, 1))
    small = _cone((12, 16), center=(6, 7.5), radius=4.0)[0]
    out = contour_overlay(image, small, levels=(0.25, 0.75), color=[(0, 255, 0), (0, 0, 255)])
    assert out.shape == (H, W, 3)
    colours = {tuple(px) for px in out[np.any(out != image, axis=2)]}
    assert colours == {(0, 255, 0), (0, 0, 255)}


def test_flat_map_draws_nothing():
    image = _xray()
    out = contour_overlay(image, np.zeros((8, 8), np.float32))
    np.testing.assert_array_equal(out, np.repeat(image[:, :, None], 3, axis=2))


@pytest.mark.parametrize(
    ("levels", "color", "width"),
    [
        ((0.0,), None, 1),
        ((0.5, 1.0), None, 1),
        ((), None, 1),
        ((0.5, 0.75), [(1, 2, 3)] * 3, 1),
        ((0.5,), None, 0),
    ],
)
def test_contour_overlay_rejects_bad_arguments(levels, color, width):
    with pytest.raises(ValueError):
        contour_overlay(_xray(), _cone()[0], levels=levels, color=color, width=width)
