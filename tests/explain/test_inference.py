import dataclasses
import threading

import numpy as np
import pytest
from scipy.special import softmax

from covid.explain.inference import Classifier, Explanation
from covid.model.classes import CLASS_NAMES

SIZE = 32
N_CLASSES = len(CLASS_NAMES)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, SIZE, SIZE, 1)).astype(np.float32)


@pytest.fixture
def classifier(tiny_cnn, tiny_metadata):
    return Classifier(tiny_cnn, tiny_metadata, batch_size=4)


def test_from_file_loads_the_verified_model(tiny_model_file):
    clf = Classifier.from_file(tiny_model_file)
    assert clf.metadata.input_size == SIZE
    assert clf.gradcam_layer == "last_conv"
    probs = clf.predict_batch(_images(3))
    assert probs.shape == (3, N_CLASSES)


def test_predict_batch_rows_are_probabilities(classifier):
    probs = classifier.predict_batch(_images(7))
    assert probs.shape == (7, N_CLASSES)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_logits_are_the_models_pre_softmax_scores(tiny_cnn, tiny_metadata):
    x = _images(5)
    clf = Classifier(tiny_cnn, dataclasses.replace(tiny_metadata, temperature=1.0))
    logits = clf.logits_batch(x)
    model_probs = tiny_cnn.predict(x, verbose=0)
    np.testing.assert_allclose(softmax(logits, axis=1), model_probs, atol=1e-5)
    np.testing.assert_allclose(clf.predict_batch(x), model_probs, atol=1e-5)


def test_temperature_softens_the_probabilities(tiny_cnn, tiny_metadata):
    x = _images(6)
    cold = Classifier(tiny_cnn, dataclasses.replace(tiny_metadata, temperature=1.0))
    warm = Classifier(tiny_cnn, dataclasses.replace(tiny_metadata, temperature=2.0))
    logits = cold.logits_batch(x)
    np.testing.assert_array_equal(warm.logits_batch(x), logits)
    p_cold, p_warm = cold.predict_batch(x), warm.predict_batch(x)
    np.testing.assert_allclose(p_warm, softmax(logits / 2.0, axis=1), atol=1e-6)
    assert np.all(p_warm.max(axis=1) < p_cold.max(axis=1))
    np.testing.assert_array_equal(p_warm.argmax(axis=1), p_cold.argmax(axis=1))


def test_batching_does_not_change_the_results(tiny_cnn, tiny_metadata):
    x = _images(7)
    small = Classifier(tiny_cnn, tiny_metadata, batch_size=3)
    large = Classifier(tiny_cnn, tiny_metadata, batch_size=32)
    np.testing.assert_allclose(small.logits_batch(x), large.logits_batch(x), atol=1e-5)
    assert small.logits_batch(x[:0]).shape == (0, N_CLASSES)
    assert small.features_batch(x[:0]).shape == (0, 16)


def test_forward_batch_returns_logits_and_pooled_features(classifier, tiny_cnn):
    x = _images(5)
    logits, features = classifier.forward_batch(x)
    assert logits.shape == (5, N_CLASSES) and features.shape == (5, 16)
    np.testing.assert_allclose(features, classifier.features_batch(x))
    np.testing.assert_allclose(logits, classifier.logits_batch(x))
    kernel, bias = tiny_cnn.get_layer("logits").get_weights()
    np.testing.assert_allclose(features @ kernel + bias, logits, rtol=1e-4, atol=1e-5)


def test_graphs_are_traced_once(classifier):
    for n in (1, 3, 4, 9):
        classifier.predict_batch(_images(n))
        classifier.explain(_images(1)[0])
    assert classifier._forward.experimental_get_tracing_count() == 1
    assert classifier._explainers["gradcam"].experimental_get_tracing_count() == 1


def _balance_predictions(classifier, x):
    """Shifts the logits biases so that about half of ``x`` is predicted as class 0, half as 1."""
    logits = classifier.logits_batch(x)
    layer = classifier.model.get_layer("logits")
    kernel, bias = layer.get_weights()
    bias[1] += float(np.median(logits[:, 0] - logits[:, 1]))
    bias[2:] -= 1e3  # the other classes never win
    layer.set_weights([kernel, bias])


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_explain_matches_predict_in_one_pass(classifier, method):
    x = _images(6, seed=2)
    _balance_predictions(classifier, x)
    probs = classifier.predict_batch(x)
    assert set(probs.argmax(axis=1).tolist()) == {0, 1}  # both classes are predicted
    features = classifier.features_batch(x)
    for i in range(len(x)):
        explanation = classifier.explain(x[i], method=method)
        assert isinstance(explanation, Explanation)
        np.testing.assert_allclose(explanation.probs, probs[i], atol=1e-6)
        np.testing.assert_allclose(explanation.features, features[i], rtol=1e-5, atol=1e-6)
        assert explanation.target == int(np.argmax(probs[i]))
        assert explanation.cam.shape == (SIZE, SIZE)
        assert explanation.cam.dtype == np.float32
        assert explanation.cam.min() >= 0.0 and explanation.cam.max() <= 1.0
        assert explanation.method == method


def test_explain_accepts_a_batch_of_one_and_a_target(classifier):
    x = _images(1)
    default = classifier.explain(x)
    other = (default.target + 1) % N_CLASSES
    explained = classifier.explain(x, target=other)
    assert explained.target == other
    np.testing.assert_allclose(explained.probs, default.probs)
    assert np.abs(explained.cam - default.cam).max() > 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        explained.target = 0


@pytest.mark.parametrize(
    "shape", [(SIZE, SIZE), (SIZE - 1, SIZE, 1), (2, SIZE, SIZE, 1), (1, SIZE, SIZE, 3)]
)
def test_explain_rejects_wrong_shapes(classifier, shape):
    with pytest.raises(ValueError):
        classifier.explain(np.zeros(shape, np.float32))


def test_explain_rejects_bad_target_or_method(classifier):
    x = _images(1)[0]
    with pytest.raises(ValueError, match="target"):
        classifier.explain(x, target=N_CLASSES)
    with pytest.raises(ValueError, match="target"):
        classifier.explain(x, target=-1)
    with pytest.raises(ValueError, match="method"):
        classifier.explain(x, method="saliency")


def test_batch_methods_reject_wrong_shapes(classifier):
    with pytest.raises(ValueError, match="batch"):
        classifier.predict_batch(np.zeros((2, 64, 64, 1), np.float32))
    with pytest.raises(ValueError, match="batch"):
        classifier.forward_batch(np.zeros((SIZE, SIZE, 1), np.float32))


def test_missing_gradcam_layer_falls_back_to_the_last_conv(tiny_cnn, tiny_metadata):
    meta = dataclasses.replace(tiny_metadata, gradcam_layer="conv5_block3_out")
    assert Classifier(tiny_cnn, meta).gradcam_layer == "last_conv"


def test_classifier_leaves_the_model_unchanged(tiny_cnn, tiny_metadata):
    x = _images(2)
    config, weights = tiny_cnn.to_json(), tiny_cnn.get_weights()
    n_layers, output = len(tiny_cnn.layers), tiny_cnn(x).numpy()
    clf = Classifier(tiny_cnn, tiny_metadata)
    clf.predict_batch(x)
    clf.explain(x[:1], method="gradcam++")
    assert tiny_cnn.to_json() == config and len(tiny_cnn.layers) == n_layers
    assert all(np.array_equal(a, b) for a, b in zip(weights, tiny_cnn.get_weights(), strict=True))
    np.testing.assert_array_equal(tiny_cnn(x).numpy(), output)


# ------------------------------------------------------------- warm-up and threads


def test_warm_up_traces_each_graph_once_and_no_later_call_traces_again(classifier):
    assert set(classifier.tracing_counts().values()) == {0}
    classifier.warm_up()
    assert classifier.tracing_counts() == {"gradcam": 1, "forward": 1, "gradcam++": 1}

    x = _images(6)
    classifier.explain(x[0])  # the first request after load
    classifier.explain(x[1], target=0, method="gradcam++")
    classifier.explain_batch(x)  # another batch size, two chunks of 4 and 2
    classifier.predict_batch(x[:3])
    classifier.features_batch(x[:1])
    assert classifier.tracing_counts() == {"gradcam": 1, "forward": 1, "gradcam++": 1}


def test_a_background_warm_up_answers_at_once_and_then_uses_the_graphs(tiny_cnn, tiny_metadata):
    x = _images(3)
    reference = Classifier(tiny_cnn, tiny_metadata)
    expected = reference.explain_batch(x)

    clf = Classifier(tiny_cnn, tiny_metadata)
    release, trace = threading.Event(), clf._trace
    clf._trace = lambda name: (release.wait(60), trace(name))  # a slow tracer
    thread = clf.warm_up_in_background()
    assert clf.warm_up_in_background() is thread  # started once
    during = clf.explain_batch(x)  # answered while nothing is traced yet: eagerly
    assert set(clf.tracing_counts().values()) == {0}
    release.set()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert clf.tracing_counts() == {"gradcam": 1, "forward": 1, "gradcam++": 1}
    after = clf.explain_batch(x)
    assert clf.tracing_counts() == {"gradcam": 1, "forward": 1, "gradcam++": 1}
    for a, b, c in zip(expected, during, after, strict=True):
        np.testing.assert_allclose(b.probs, a.probs, atol=1e-5)
        np.testing.assert_allclose(b.cam, a.cam, atol=1e-4)
        np.testing.assert_allclose(c.probs, a.probs, atol=1e-5)
        assert a.target == b.target == c.target


def test_the_background_warm_up_traces_only_while_the_network_is_idle(tiny_cnn, tiny_metadata):
    x = _images(2)
    clf = Classifier(tiny_cnn, tiny_metadata)
    running, finish = threading.Event(), threading.Event()
    eager = clf._explainer_impl

    def slow_eager(method):  # the eager twin of a graph, held until the test lets it finish
        step = eager(method)
        return lambda *args: (running.set(), finish.wait(60), step(*args))[-1]

    clf._explainer_impl = slow_eager
    call = threading.Thread(target=clf.explain_batch, args=(x,))
    thread = clf.warm_up_in_background(idle_s=0.05, delay_s=0.0, later_idle_s=0.05)
    call.start()
    assert running.wait(60)  # a film is being answered (eagerly: nothing is traced yet)
    thread.join(timeout=0.5)
    assert thread.is_alive() and set(clf.tracing_counts().values()) == {0}  # no tracing beside it
    finish.set()
    call.join(timeout=60)
    thread.join(timeout=120)
    assert clf.tracing_counts() == {"gradcam": 1, "forward": 1, "gradcam++": 1}


def test_the_first_graph_waits_for_the_first_film_then_follows_it(tiny_cnn, tiny_metadata):
    clf = Classifier(tiny_cnn, tiny_metadata)
    thread = clf.warm_up_in_background(idle_s=0.0, delay_s=60.0, later_idle_s=0.0)
    thread.join(timeout=0.5)
    assert thread.is_alive() and set(clf.tracing_counts().values()) == {0}  # the delay holds
    clf.explain_batch(_images(1))  # the first film: answered eagerly, and ends the delay
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert clf.tracing_counts() == {"gradcam": 1, "forward": 1, "gradcam++": 1}


def test_a_call_while_its_graph_is_traced_waits_for_the_graph(tiny_cnn, tiny_metadata):
    x = _images(3)
    expected = Classifier(tiny_cnn, tiny_metadata).explain_batch(x)
    clf = Classifier(tiny_cnn, tiny_metadata)
    tracing, release, trace = threading.Event(), threading.Event(), clf._trace

    def slow_trace(name):
        tracing.set()
        release.wait(60)
        trace(name)

    clf._trace = slow_trace
    eager_calls = []
    eager = clf._explainer_impl
    clf._explainer_impl = lambda method: (eager_calls.append(method), eager(method))[-1]
    thread = clf.warm_up_in_background(idle_s=0.0, delay_s=0.0, later_idle_s=0.0)
    assert tracing.wait(60)  # the warm-up is tracing the Grad-CAM graph
    answers = []
    call = threading.Thread(target=lambda: answers.extend(clf.explain_batch(x)))
    call.start()
    call.join(timeout=0.5)
    assert call.is_alive()  # waiting for the graph, not running eagerly beside the tracing
    release.set()
    call.join(timeout=60)
    thread.join(timeout=120)
    assert "gradcam" not in eager_calls
    assert clf.tracing_counts()["gradcam"] == 1
    for want, got in zip(expected, answers, strict=True):
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-6)
        np.testing.assert_allclose(got.cam, want.cam, atol=1e-6)


def test_threads_calling_at_once_each_get_their_own_answers(classifier):
    from concurrent.futures import ThreadPoolExecutor

    classifier.warm_up()
    batches = [_images(3, seed=s) for s in range(6)]
    expected = [classifier.explain_batch(b, method="gradcam++") for b in batches]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda b: classifier.explain_batch(b, method="gradcam++"), batches))
    for want, have in zip(expected, got, strict=True):
        for a, b in zip(want, have, strict=True):
            np.testing.assert_allclose(b.probs, a.probs, atol=1e-6)
            np.testing.assert_allclose(b.cam, a.cam, atol=1e-6)
    assert classifier.tracing_counts()["gradcam++"] == 1
