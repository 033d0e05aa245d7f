"""The Streamlit page, driven in-process by ``streamlit.testing.v1.AppTest``.

The page serves the tiny test model (``COVID_MODEL_PATH``); uploads are synthetic
PNGs held in memory. The out-of-distribution detector is replaced by a fake so
that the tests control whether an image is flagged.
"""

from __future__ import annotations

import importlib.machinery
import io
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from PIL import Image
from streamlit.testing.v1 import AppTest

from covid import DISCLAIMER
from covid.inference import Classifier
from covid.io import decode_image
from covid.model import read_metadata
from covid.preprocess import to_model_input

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
TIMEOUT = 120


def _png(seed: int = 0, size: int = 128) -> bytes:
    """A smooth grayscale image big enough for the decoder, as PNG bytes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = 128 + 60 * np.sin(xx / 9.0 + seed) * np.cos(yy / 13.0) + rng.normal(0, 8, xx.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


class _FakeDetector:
    def __init__(self, flagged: bool) -> None:
        self.flagged = flagged

    def assess(self, decoded, features):
        return types.SimpleNamespace(
            flagged=self.flagged, score=9.0 if self.flagged else 0.1,
            reason="its intensity histogram is unlike the training X-rays." if self.flagged
            else None,
        )


def _fake_ood_module(flagged: bool) -> types.ModuleType:
    module = types.ModuleType("covid.ood")
    module.__spec__ = importlib.machinery.ModuleSpec("covid.ood", None)
    module.load_detector = lambda path: _FakeDetector(flagged)
    return module


@pytest.fixture
def make_app(tiny_model_file, monkeypatch):
    """Returns a factory of AppTests serving the tiny model (fake OOD detector)."""
    monkeypatch.setenv("COVID_MODEL_PATH", str(tiny_model_file))

    def make(flagged: bool = False) -> AppTest:
        monkeypatch.setitem(sys.modules, "covid.ood", _fake_ood_module(flagged))
        st.cache_resource.clear()
        st.cache_data.clear()
        return AppTest.from_file(str(APP), default_timeout=TIMEOUT)

    yield make
    st.cache_resource.clear()


@pytest.fixture
def meta(tiny_model_file):
    return read_metadata(tiny_model_file)


@pytest.fixture
def calls(monkeypatch):
    """Counts the network calls the page makes through the Classifier."""
    counts = {"forward": 0, "explain": []}
    forward, explain = Classifier.forward_batch, Classifier.explain

    def counting_forward(self, x, *args, **kwargs):
        counts["forward"] += len(x)
        return forward(self, x, *args, **kwargs)

    def counting_explain(self, x, target=None, method="gradcam", **kwargs):
        counts["explain"].append((target, method))
        return explain(self, x, target=target, method=method, **kwargs)

    monkeypatch.setattr(Classifier, "forward_batch", counting_forward)
    monkeypatch.setattr(Classifier, "explain", counting_explain)
    return counts


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [a.value for a in (*at.warning, *at.info)]
    parts += [a.value for a in (*at.error, *at.success)] + [c.value for c in at.caption]
    return "\n".join(str(p) for p in parts)


def _percentages(at: AppTest, class_names: list[str]) -> dict[str, float]:
    found = {}
    for bar in at.progress:
        text = bar.text.replace("*", "")
        for name in class_names:
            if text.startswith(f"{name} "):
                found[name] = float(text.split()[1].rstrip("%"))
    return found


def test_page_renders_controls_and_model_card(make_app, meta):
    at = make_app().run()
    assert not at.exception
    assert at.title[0].value == "Chest X-ray screening"
    assert any(DISCLAIMER in w.value for w in at.warning)

    assert at.selectbox(key="target").options == ["Predicted class", *meta.class_names]
    assert at.selectbox(key="target").value == "Predicted class"
    assert at.radio(key="method").options == ["Grad-CAM", "Grad-CAM++"]
    assert at.radio(key="view").options == ["Overlay", "Heatmap alone", "Contour lines"]
    assert "jet" in at.selectbox(key="colormap").options
    opacity = at.slider(key="opacity")
    assert opacity.min == 0.0 and opacity.max == 1.0 and 0.0 < opacity.value < 1.0
    uploader = at.file_uploader(key="uploads")
    assert uploader.accept_multiple_files
    assert set(uploader.allowed_type) >= {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}

    sidebar = "\n".join(m.value for m in at.sidebar.markdown)
    sidebar += "\n".join(c.value for c in at.sidebar.caption)
    assert meta.name in sidebar and meta.sha256[:12] in sidebar
    assert f"{meta.threshold:.3f}" in sidebar and f"{meta.temperature:.3f}" in sidebar
    assert any("Upload one or more chest X-rays" in i.value for i in at.info)


def test_missing_model_explains_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setenv("COVID_MODEL_PATH", str(tmp_path / "absent.keras"))
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "absent.keras" in at.error[0].value
    assert "python -m covid.train" in at.info[0].value
    assert "python -m covid.evaluate" in at.info[0].value
    assert not at.slider and not at.file_uploader
    assert any(DISCLAIMER in w.value for w in at.warning)


def test_altered_model_file_is_refused(monkeypatch, tmp_path, tiny_model_file):
    copy = tmp_path / "model.keras"
    shutil.copyfile(tiny_model_file, copy)
    raw = json.loads(Path(tiny_model_file).with_suffix(".json").read_text())
    raw["sha256"] = "0" * 64
    copy.with_suffix(".json").write_text(json.dumps(raw))
    monkeypatch.setenv("COVID_MODEL_PATH", str(copy))
    st.cache_resource.clear()
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "does not match" in at.error[0].value
    assert "python -m covid.train" in at.info[0].value


def test_upload_shows_one_result_per_xray_and_one_error_per_bad_file(make_app, meta, calls):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value([
        ("chest.png", _png(1), "image/png"),
        ("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "image/png"),
        ("other.png", _png(2), "image/png"),
    ]).run()
    assert not at.exception

    errors = [e.value for e in at.error if "broken.png" in e.value]
    assert len(errors) == 1 and errors[0].startswith("broken.png")
    assert [h.value for h in at.subheader] == ["chest.png", "other.png"]

    pct = _percentages(at, meta.class_names)
    assert set(pct) == set(meta.class_names)
    bars = [b for b in at.progress if "%" in b.text]
    assert len(bars) == 2 * len(meta.class_names)
    for i in range(0, len(bars), len(meta.class_names)):
        values = [float(b.text.replace("*", "").split()[1].rstrip("%"))
                  for b in bars[i:i + len(meta.class_names)]]
        assert round(sum(values), 6) == 100.0
        assert sum("prediction" in b.text for b in bars[i:i + len(meta.class_names)]) == 1

    triage = [a.value for a in (*at.success, *at.error) if DISCLAIMER in a.value]
    assert len(triage) == 2
    captions = [c for img in at.image for c in img.captions]
    assert sum(c == "X-ray" for c in captions) == 2
    assert sum(c.startswith("Grad-CAM") for c in captions) == 2
    assert calls["forward"] == 2 and len(calls["explain"]) == 2


def test_display_controls_do_not_rerun_the_network(make_app, meta, calls):
    at = make_app().run()
    at.file_uploader(key="uploads").set_value(("chest.png", _png(3), "image/png")).run()
    assert not at.exception
    assert calls["forward"] == 1 and len(calls["explain"]) == 1

    at.slider(key="opacity").set_value(0.8).run()
    at.selectbox(key="colormap").set_value(at.selectbox(key="colormap").options[-1]).run()
    at.radio(key="view").set_value("Heatmap alone").run()
    at.radio(key="view").set_value("Contour lines").run()
    at.radio(key="view").set_value("Overlay").run()
    assert not at.exception
    assert calls["forward"] == 1 and len(calls["explain"]) == 1

    at.radio(key="method").set_value("Grad-CAM++").run()
    assert calls["forward"] == 1 and calls["explain"][-1][1] == "gradcam++"
    for name in meta.class_names:
        at.selectbox(key="target").set_value(name).run()
    assert not at.exception
    explained = set(calls["explain"])
    assert len(explained) == len(calls["explain"])  # never the same map twice
    assert {t for t, m in explained if m == "gradcam++"} == set(range(len(meta.class_names)))
    assert calls["forward"] == 1
    assert any("Grad-CAM++" in c for img in at.image for c in img.captions)


def test_out_of_distribution_image_gets_warning_and_no_triage(make_app, meta):
    at = make_app(flagged=True).run()
    at.file_uploader(key="uploads").set_value(("cat.png", _png(4), "image/png")).run()
    assert not at.exception
    assert any("does not look like a chest X-ray" in w.value for w in at.warning)
    assert not [a for a in (*at.success, *at.error) if DISCLAIMER in a.value]
    assert at.expander and "Raw model scores" in at.expander[0].label
    pct = _percentages(at, meta.class_names)
    assert round(sum(pct.values()), 6) == 100.0
    assert not any("prediction" in bar.text for bar in at.progress)


def test_a_failing_map_only_hides_its_own_panel(make_app, meta, monkeypatch):
    explain = Classifier.explain

    def flaky(self, x, target=None, method="gradcam"):
        if float(np.asarray(x).mean()) == flaky.bad_mean:
            raise RuntimeError("simulated failure")
        return explain(self, x, target=target, method=method)

    size = meta.input_size
    flaky.bad_mean = float(to_model_input(decode_image(_png(5), "bad.png").pixels, size).mean())
    monkeypatch.setattr(Classifier, "explain", flaky)
    at = make_app().run()
    at.file_uploader(key="uploads").set_value([
        ("bad.png", _png(5), "image/png"), ("good.png", _png(6), "image/png"),
    ]).run()
    assert not at.exception
    assert any(e.value.startswith("bad.png: the result could not be displayed") for e in at.error)
    assert [h.value for h in at.subheader] == ["good.png"]
    assert any(c.startswith("Grad-CAM") for img in at.image for c in img.captions)
