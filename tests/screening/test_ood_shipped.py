"""The out-of-distribution gates of the shipped model, on real non-chest images and X-rays.

Non-chest images are real photos and scans that ship with matplotlib and pydicom,
plus synthetic ones (noise, flat, a chart, a text page): each must be refused as
not a chest X-ray. Real X-rays from the model's own held-out test split must
never be refused; the few unlike the training films are flagged ``unusual`` and
admitted.
"""

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib import cbook
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file

from covid.evaluation.artefacts import artefact_paths
from covid.evaluation.scoring import split_side
from covid.model.metadata import read_metadata
from covid.model.network import DEFAULT_MODEL_PATH
from covid.screening.pipeline import analyse


def _has_ood_stats() -> bool:
    return DEFAULT_MODEL_PATH.exists() and "ood" in read_metadata(DEFAULT_MODEL_PATH).extra


pytestmark = pytest.mark.skipif(
    not _has_ood_stats(),
    reason=f"no shipped model with out-of-distribution statistics at {DEFAULT_MODEL_PATH}",
)

MAX_UNUSUAL_RATE = 0.05
"""The feature-distance threshold flags 2% of validation X-rays as unusual; 5% bounds
sampling noise on 300 films."""


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chart() -> bytes:
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.bar(["a", "b", "c"], [3, 1, 2])
    ax.plot([0, 1, 2], [1, 3, 2], color="black")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _text_page() -> bytes:
    page = Image.new("L", (300, 400), 255)
    draw = ImageDraw.Draw(page)
    for row in range(30):
        draw.text((10, 10 + row * 13), "Lorem ipsum dolor sit amet, consectetur " * 2, fill=0)
    return _png(np.asarray(page))


def _mri_slice() -> bytes:
    with gzip.open(cbook.get_sample_data("s1045.ima.gz", asfileobj=False)) as handle:
        raw = np.frombuffer(handle.read(), ">u2").reshape(256, 256).astype(np.float64)
    return _png((raw / raw.max() * 255).astype(np.uint8))


def non_chest_corpus() -> list[tuple[str, bytes]]:
    """Real non-chest images shipped with matplotlib and pydicom, and synthetic ones."""
    rng = np.random.default_rng(0)
    files = [
        (name, Path(cbook.get_sample_data(name, asfileobj=False)).read_bytes())
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
    ]
    files.append(("mri_s1045.png", _mri_slice()))
    files += [(name, Path(get_testdata_file(name)).read_bytes())
              for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "JPGExtended.dcm",
                           "SC_rgb_jpeg.dcm", "MR_small_RLE.dcm")]
    files += [
        ("noise.png", _png(rng.integers(0, 256, (256, 256), dtype=np.uint8))),
        ("flat.png", _png(np.full((256, 256), 128, np.uint8))),
        ("chart.png", _chart()),
        ("text_page.png", _text_page()),
    ]
    return files


def _screen(models, files):
    """The files through the serving pipeline with the shipped classifier, segmenter and gate."""
    return analyse(files, models.classifier, ood=models.ood, segmenter=models.segmenter)


def test_every_non_chest_image_is_refused(shipped_models):
    results = _screen(shipped_models, non_chest_corpus())
    assert len(results) == 14
    missed = {r.name: r.flag for r in results if not (r.refused or r.error is not None)}
    print(f"non-chest images refused or unreadable: {len(results) - len(missed)}/14")
    assert missed == {}
    for r in results:
        if r.error is None:
            assert r.label == "" and r.decision.advice == "" and r.cam is None
            assert "not look like a chest X-ray" in r.triage


def test_real_xrays_are_never_refused_and_the_unusual_ones_are_admitted(
    shipped_models, shared_data_dir
):
    films = split_side(json.loads(artefact_paths(DEFAULT_MODEL_PATH)["split"].read_text()),
                       "test")
    files = [(films.names[i], films.paths[i].read_bytes())
             for i in range(0, len(films.names), 6)][:300]
    results = _screen(shipped_models, files)
    assert all(r.error is None for r in results)
    assert [(r.name, r.flag_reason) for r in results if r.refused] == []
    unusual = [r for r in results if r.flag == "unusual"]
    rate = len(unusual) / len(results)
    print(f"unusual on {len(results)} real test-split X-rays: {rate:.3f}")
    assert rate <= MAX_UNUSUAL_RATE
    assert all(r.label and r.decision.advice == "admit" for r in unusual)
