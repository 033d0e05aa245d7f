import json

import keras
import numpy as np
import pytest

from covid.model.classes import CLASS_NAMES
from covid.model.metadata import (
    GRADCAM_LAYER,
    ModelFileError,
    ModelMetadata,
    file_sha256,
    metadata_path,
    read_metadata,
)
from covid.model.network import (
    ResNetGrayPreprocess,
    build_model,
    load_model,
    save_with_metadata,
)


@pytest.fixture(scope="module")
def resnet():
    return build_model(input_size=None)


def test_preprocessing_matches_resnet50_preprocess_input():
    gray = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    ours = keras.ops.convert_to_numpy(ResNetGrayPreprocess()(gray))
    reference = keras.applications.resnet50.preprocess_input(np.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_resnet50_structure(resnet):
    bns = [layer for layer in resnet.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 53
    assert all(layer.momentum == 0.9 for layer in bns)
    assert resnet.get_layer(GRADCAM_LAYER).output.shape[-1] == 2048
    assert resnet.get_layer("logits").units == len(CLASS_NAMES)
    assert resnet.output_shape == (None, len(CLASS_NAMES))
    assert 23e6 < resnet.count_params() < 24e6


def test_any_input_size_gives_probabilities(resnet):
    for size in (64, 112):
        probs = resnet.predict(np.full((2, size, size, 1), 128.0, "float32"), verbose=0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_save_load_round_trip_and_sha(tiny_model_file):
    model, meta = load_model(tiny_model_file)
    assert meta.sha256 == file_sha256(tiny_model_file)
    assert meta.class_names == list(CLASS_NAMES)
    assert isinstance(model, keras.Model) and model.output_shape == (None, len(CLASS_NAMES))


def test_load_refuses_altered_file(tiny_model_file, tmp_path):
    altered = tmp_path / "altered.keras"
    data = bytearray(tiny_model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    metadata_path(altered).write_text(metadata_path(tiny_model_file).read_text())
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        load_model(altered)


def test_load_refuses_missing_files(tiny_model_file, tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nothing.keras")
    lonely = tmp_path / "lonely.keras"
    lonely.write_bytes(tiny_model_file.read_bytes())
    with pytest.raises(ModelFileError, match="metadata not found"):
        load_model(lonely)


def test_metadata_ignores_unknown_keys(tmp_path):
    meta = ModelMetadata(class_names=list(CLASS_NAMES), input_size=160, input_mode="crop",
                         threshold=0.3, temperature=1.7)
    text = meta.to_json().replace('"version"', '"future_key": 1,\n  "version"')
    (tmp_path / "m.json").write_text(text)
    loaded = read_metadata(tmp_path / "m.keras")
    assert (loaded.threshold, loaded.temperature, loaded.positive_index) == (0.3, 1.7, 0)


def test_a_stride_16_last_stage_doubles_the_map_grid_with_the_same_weights(resnet):
    dilated = build_model(input_size=None, output_stride=16)
    assert [w.shape for w in dilated.weights] == [w.shape for w in resnet.weights]
    x = np.zeros((1, 160, 160, 1), "float32")
    grid = {}
    for stride, model in ((32, resnet), (16, dilated)):
        cam = keras.Model(model.input, model.get_layer(GRADCAM_LAYER).output)
        grid[stride] = tuple(cam(x).shape[1:3])
    assert grid == {32: (5, 5), 16: (10, 10)}
    with pytest.raises(ValueError, match="output_stride"):
        build_model(output_stride=8)


def test_older_metadata_reads_as_no_contrast_and_no_recorded_grid(tmp_path):
    text = ModelMetadata(version="3", class_names=list(CLASS_NAMES), input_size=160,
                         input_mode="crop").to_json()
    old = "\n".join(line for line in text.splitlines()
                    if "input_contrast" not in line and "map_grid" not in line)
    meta = ModelMetadata.from_json(old)
    assert meta.input_contrast == "none" and meta.map_grid == []
    meta = ModelMetadata(class_names=list(CLASS_NAMES), input_size=160, input_mode="crop",
                         input_contrast="equalise", map_grid=[10, 10])
    assert ModelMetadata.from_json(meta.to_json()).map_grid == [10, 10]


V1_METADATA = {  # the first shipped model's file, before the input mode was recorded
    "name": "COVID-19 chest X-ray ResNet-50", "version": "1", "class_names": ["COVID", "Normal"],
    "positive_class": "COVID", "input_size": 224, "gradcam_layer": "conv5_block3_out",
    "temperature": 0.889, "threshold": 0.0565, "sha256": "ab" * 32,
}


def test_a_two_class_model_from_before_the_input_mode_still_loads_and_decides(
        tmp_path, tiny_cnn_factory):
    from covid.model.decision import decide

    path = tmp_path / "v1.keras"
    save_with_metadata(tiny_cnn_factory(n_classes=2), ModelMetadata.from_json(
        json.dumps({**V1_METADATA, "input_size": 32})), path)
    raw = json.loads(metadata_path(path).read_text())
    del raw["input_mode"]  # as v1 wrote it
    metadata_path(path).write_text(json.dumps(raw))
    model, meta = load_model(path)
    assert meta.class_names == ["COVID", "Normal"] and meta.input_size == 32
    assert meta.input_mode == "full" and meta.positive_index == 0
    probs = model.predict(np.full((1, 32, 32, 1), 128.0, "float32"), verbose=0)[0]
    decision = decide(probs, meta.class_names, meta.threshold)
    assert decision.label in meta.class_names and decision.p_finding == pytest.approx(probs[0])


@pytest.mark.parametrize("missing", ["class_names", "input_size"])
def test_metadata_without_the_models_own_facts_is_malformed(tmp_path, missing):
    raw = {k: v for k, v in V1_METADATA.items() if k != missing}
    (tmp_path / "m.json").write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match=f"malformed.*{missing}"):
        read_metadata(tmp_path / "m.keras")
