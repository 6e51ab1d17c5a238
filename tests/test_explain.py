"""Teach mode (``Network.explain``, ``gpubp explain``): the worked example digit for digit, every printed number
against independent NumPy arithmetic, every gradient against its finite difference, the drawing, the command.

The worked example's network, written by hand: hidden neuron 0 has weights 0.1, 0.5, 0.9 and bias −2.0 (the
textbook's); the rest are our choice: hidden neuron 1 weights −0.3, 0.2, 0.4, bias 0.5; output weights
[[0.6, −0.4], [0.3, 0.8]], biases 0.1, −0.2. Input 2, 3, 4; target 1, 0.
"""

from __future__ import annotations

import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from emulated_gpu import emulated_gpus
from test_cli import assert_one_line_error, needs_digits, needs_matplotlib, run
from test_worked_examples import HalfSquare

import gpubp
from gpubp.explain import CHECK_ALL, MAX_SAMPLES, relative_error
from gpubp.explain_text import LARGEST_TERMS, MAX_NEURONS, num
from gpubp.json_network import network_from_json, read_json_network

SVG = "{http://www.w3.org/2000/svg}"
EXAMPLE = {"sizes": [3, 2, 2], "activation": "sigmoid", "cost": "quadratic",
           "weights": [[[0.1, 0.5, 0.9], [-0.3, 0.2, 0.4]], [[0.6, -0.4], [0.3, 0.8]]],
           "biases": [[-2.0, 0.5], [0.1, -0.2]]}
X, Y = np.array([2.0, 3.0, 4.0]), np.array([1.0, 0.0])


@pytest.fixture
def example_file(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(json.dumps(EXAMPLE))
    return path


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def by_hand(x=X, y=Y, lr=0.5):
    """The example's numbers with column vectors, written out from the equations (no gpubp)."""
    W1, W2 = (np.array(w) for w in EXAMPLE["weights"])
    b1, b2 = (np.array(b) for b in EXAMPLE["biases"])
    z1 = W1 @ x + b1
    a1 = sigmoid(z1)
    z2 = W2 @ a1 + b2
    a2 = sigmoid(z2)
    cost = 0.5 * np.sum((y - a2) ** 2)
    d2 = (a2 - y) * a2 * (1 - a2)                   # BP1
    d1 = (W2.T @ d2) * a1 * (1 - a1)                # BP2
    grads = dict(w1=np.outer(d1, x), w2=np.outer(d2, a1), b1=d1, b2=d2)   # BP3, BP4
    after = dict(W1=W1 - lr * grads["w1"], W2=W2 - lr * grads["w2"], b1=b1 - lr * d1, b2=b2 - lr * d2)
    a_after = sigmoid(after["W2"] @ sigmoid(after["W1"] @ x + after["b1"]) + after["b2"])
    return dict(z1=z1, a1=a1, z2=z2, a2=a2, cost=cost, d1=d1, d2=d2, sums=W1 @ x, **grads, after=after,
                cost_after=0.5 * np.sum((y - a_after) ** 2))


def line_with(text: str, start: str) -> str:
    lines = [line for line in text.splitlines() if line.lstrip().startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0]


# ---- the worked example ---------------------------------------------------------------------------------
def test_worked_example_digit_for_digit(example_file):
    text = str(read_json_network(example_file).explain(X, Y))
    assert "neuron 0: 2.0·0.1 + 3.0·0.5 + 4.0·0.9 = 5.3, + bias −2.0 → z = 3.3, " \
           "σ(3.3) = 1/(1 + e^−3.3) ≈ 0.96" in text
    assert "neuron 1: 2.0·(−0.3) + 3.0·0.2 + 4.0·0.4 = 1.6, + bias 0.5 → z = 2.1, " \
           "σ(2.1) = 1/(1 + e^−2.1) ≈ 0.8909" in text


def test_printed_numbers_are_the_arithmetic(example_file):
    """Every printed sum, z, a, C, δ, gradient and new parameter is what NumPy computes from the equations."""
    h = by_hand()
    text = str(read_json_network(example_file).explain(X, Y, lr=0.5))
    for l, (sums, zs, acts) in enumerate([(h["sums"], h["z1"], h["a1"]),
                                          (h["z2"] - np.array(EXAMPLE["biases"][1]), h["z2"], h["a2"])]):
        forward = [line for line in text.splitlines() if line.startswith("  neuron ")][2 * l:2 * l + 2]
        for j, line in enumerate(forward):
            assert f"= {num(sums[j])}, + bias" in line and f"→ z = {num(zs[j])}," in line
            assert line.endswith(f"≈ {num(acts[j])}")
    assert line_with(text, "Cost: C = ½‖y − aᴸ‖²").endswith(f"= {num(h['cost'])}")
    for j in range(2):
        assert f"= {num(h['d2'][j])}   (σ′" in line_with(text, f"δ²{'₀₁'[j]} = ")
        assert f"= {num(h['d1'][j])}   (σ′" in line_with(text, f"δ¹{'₀₁'[j]} = ")
        for l, name in ((1, "b1"), (2, "b2")):
            line = line_with(text, f"∂C/∂b{'¹²'[l - 1]}{'₀₁'[j]} =")
            assert f"= {num(h[name][j])}   [finite difference {num(h[name][j])}," in line
    for l, name, width in ((1, "w1", 3), (2, "w2", 2)):
        for j in range(2):
            for k in range(width):
                line = line_with(text, f"∂C/∂w{'¹²'[l - 1]}[{j},{k}] =")
                assert f"= {num(h[name][j, k])}   [finite difference {num(h[name][j, k])}," in line
                new = h["after"][f"W{l}"][j, k]
                assert line_with(text, f"w{'¹²'[l - 1]}[{j},{k}]:").endswith(f"= {num(new, 6)}")
    assert line_with(text, "cost before the step").startswith(
        f"cost before the step C = {num(h['cost'], 6)}, after it {num(h['cost_after'], 6)}")


@pytest.mark.usefixtures("cpu_backend")
def test_arrays_match_numpy_and_finite_differences(example_file):
    net = read_json_network(example_file)
    before = net.parameters().copy()
    e = net.explain(X, Y, lr=0.25)
    h = by_hand(lr=0.25)
    close = dict(rtol=1e-12, atol=1e-15)
    for got, want in [(e.zs[0][0], h["z1"]), (e.activations[0][0], h["a1"]), (e.zs[1][0], h["z2"]),
                      (e.activations[1][0], h["a2"]), (e.deltas[0][0], h["d1"]), (e.deltas[1][0], h["d2"]),
                      (e.nabla_w[0], h["w1"]), (e.nabla_w[1], h["w2"]), (e.nabla_b[0], h["b1"]),
                      (e.nabla_b[1], h["b2"]), (e.new_weights[0], h["after"]["W1"]),
                      (e.new_biases[1], h["after"]["b2"]), (e.cost_gradient[0], h["a2"] - Y)]:
        np.testing.assert_allclose(got, want, **close)
    assert e.cost == pytest.approx(h["cost"], rel=1e-12) and e.costs[0] == pytest.approx(h["cost"], rel=1e-12)
    assert e.cost_after == pytest.approx(h["cost_after"], rel=1e-12) and e.cost_after < e.cost
    assert e.checked == e.n_parameters == 14
    assert repr(e) == "<Explanation of a [3, 2, 2] network on 1 sample: C = 0.326584, after one SGD step (lr 0.25) " \
                      f"{e.cost_after:.6g}; print() it>" and isinstance(e, gpubp.Explanation)
    for g, n in zip(e.nabla_w + e.nabla_b, e.numeric_w + e.numeric_b):
        assert np.isfinite(n).all()
        assert relative_error(g, n).max() < 1e-6
    assert e.max_relative_error < 1e-6
    np.testing.assert_array_equal(net.parameters(), before)  # explaining changes nothing


def test_a_tiny_batch_is_the_mean_over_its_samples(example_file):
    net = read_json_network(example_file)
    Xb = np.array([[2.0, 3.0, 4.0], [0.5, -1.0, 1.5], [1.0, 0.0, -2.0]])
    Yb = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    e = net.explain(Xb, Yb)
    hands = [by_hand(x, y) for x, y in zip(Xb, Yb)]
    np.testing.assert_allclose(e.nabla_w[0], np.mean([h["w1"] for h in hands], axis=0), rtol=1e-12)
    np.testing.assert_allclose(e.nabla_b[1], np.mean([h["b2"] for h in hands], axis=0), rtol=1e-12)
    assert e.cost == pytest.approx(np.mean([h["cost"] for h in hands]), rel=1e-12)
    assert e.max_relative_error < 1e-6
    text = str(e)
    assert "sample 3 of 3" in text and "C = (1/3) Σₓ Cₓ" in text
    assert line_with(text, "∂C/∂b²₀ =").startswith("  ∂C/∂b²₀ = (1/3)(")


# ---- every activation and cost, user-defined ones included ---------------------------------------------
PAIRS = [(hidden, output, cost) for hidden in ("sigmoid", "tanh", "relu", "leaky_relu", "softplus", "swish", "gelu",
                                               "mish", "identity", "elu", "selu")
         for output, cost in (("identity", "quadratic"),)] + \
    [("tanh", "sigmoid", "cross_entropy"), ("relu", "softmax", "log_likelihood"), ("elu", "softmax", "quadratic"),
     ("selu", "softmax", "cross_entropy"), ("gelu", "tanh", "quadratic")]


@pytest.mark.parametrize("hidden, output, cost", PAIRS)
def test_every_activation_and_cost_matches_finite_differences(hidden, output, cost):
    net = gpubp.Network([3, 4, 3], activation=hidden, output=output, cost=cost, device="cpu", dtype="float64",
                        seed=1)
    x = np.array([0.7, -1.2, 0.4])
    y = 2 if cost == "log_likelihood" else np.array([0.9, 0.1, 0.3])
    e = net.explain(x, y)
    assert e.checked == e.n_parameters
    for g, n in zip(e.nabla_w + e.nabla_b, e.numeric_w + e.numeric_b):
        np.testing.assert_allclose(g, n, rtol=1e-5, atol=1e-9)   # a tiny gradient's difference is noise
    np.testing.assert_allclose(e.nabla_w[0], net.backprop(x, y)[0][0], rtol=1e-12)
    text = str(e)
    assert line_with(text, "neuron 0: 0.7·").endswith(f" {num(e.activations[0][0, 0])}")
    closed = {"sigmoid": "σ(", "tanh": "tanh(", "relu": "max(0, ", "softplus": "ln(1 + e^", "gelu": "tanh(√(2/π)"}
    if hidden in closed:
        assert closed[hidden] in text


def test_user_defined_cost_and_activation_are_shown_without_closed_forms():
    cost = gpubp.CustomCost(lambda a, y: (a ** 4).sum(axis=-1), lambda a, y: 4 * a ** 3, needs_target=False,
                            name="fourth_power")
    net = gpubp.Network([2, 3, 2], activation="tanh", output="identity", cost=cost, device="cpu", dtype="float64",
                        seed=0)
    net.layer_activations = (HalfSquare(), net.output)
    x = np.array([0.5, -0.8])
    e = net.explain(x)
    z, a = e.zs[0][0], e.activations[0][0]
    np.testing.assert_allclose(a, z * z / 2, rtol=1e-12)
    assert e.cost == pytest.approx(float((e.activations[1][0] ** 4).sum()), rel=1e-12)
    assert e.max_relative_error < 1e-5 and e.checked == e.n_parameters
    text = str(e)
    assert f"half_square({num(z[0])}) = {num(a[0])}" in text and "half_square(" in text
    assert "layer 1 (2 → 3, half_square)" in text
    assert "Cost: C = fourth_power(aᴸ) = " in text and "(user-defined)" in text
    assert "half_square′(" in text  # σ′ by its value only


# ---- a wide network abbreviates ---------------------------------------------------------------------------
@pytest.mark.usefixtures("cpu_backend")
def test_a_wide_network_is_abbreviated_and_checked_where_shown():
    net = gpubp.Network([784, 30, 10], device="cpu", seed=0)   # MNIST's shape, float32
    rng = np.random.default_rng(0)
    image = np.where(rng.random(784) < 0.2, rng.random(784), 0.0)
    e = net.explain(image, 7)
    text = str(e)
    hidden, output = e.layers
    assert len(hidden.shown) == 6 and list(hidden.shown[:3]) == [0, 1, 2]
    largest = np.argsort(-np.abs(hidden.delta[0, 3:]))[:3] + 3
    assert set(largest) <= set(hidden.shown)
    assert len(output.shown) == 10 <= MAX_NEURONS
    assert "… 24 more neurons not shown" in text
    assert "(780 more terms)" in text and "(26 more terms)" in text
    assert "784 values" in text and len(text.splitlines()) < 300
    assert 0 < e.checked < e.n_parameters > CHECK_ALL
    for g, n in zip(e.nabla_w + e.nabla_b, e.numeric_w + e.numeric_b):
        checked = np.isfinite(n)
        np.testing.assert_allclose(g[checked], n[checked], rtol=1e-3, atol=1e-6)  # float32 against float64
    for j in hidden.shown:
        terms = hidden.terms[int(j)]
        assert len(terms) == LARGEST_TERMS and np.isfinite(hidden.numeric_w[j, terms]).all()


def test_on_a_gpu_the_numbers_are_the_cpus(tmp_path):
    """On the second of two emulated GPUs (tests/cpp/emulated_cupy.py): the same explanation as on the CPU."""
    with emulated_gpus(tmp_path):
        x = np.array([0.5, -1.0, 2.0])
        cpu, gpu = (gpubp.Network([3, 4, 2], output="softmax", cost="log_likelihood", device=device,
                                  dtype="float64", seed=0).explain(x, 1) for device in ("cpu", "cuda:1"))
        assert gpu.device == "cuda:1"
        for here, there in zip(cpu.zs + cpu.deltas + cpu.nabla_w + cpu.new_biases,
                               gpu.zs + gpu.deltas + gpu.nabla_w + gpu.new_biases):
            np.testing.assert_allclose(there, here, rtol=1e-10)
        assert gpu.max_relative_error < 1e-6 and gpu.cost_after == pytest.approx(cpu.cost_after, rel=1e-10)
        assert str(gpu).splitlines()[1:] == str(cpu).splitlines()[1:]   # all but the device's name


MNIST = Path(os.environ.get("GPUBP_DATA", "/nonexistent"))


@pytest.mark.mnist
@pytest.mark.skipif(not (MNIST / "mnist" / "train-images-idx3-ubyte.gz").is_file(),
                    reason="MNIST not found: set GPUBP_DATA to a folder whose mnist/ holds the four IDX .gz files")
def test_a_trained_mnist_model_explains_a_test_image(capsys, tmp_path):
    data = gpubp.datasets.load_mnist(MNIST)
    net = gpubp.Network([784, 30, 10], device="cpu", seed=0)
    net.fit(*data.train, epochs=1, batch_size=10, lr=3.0, progress=False, seed=0)
    model = tmp_path / "mnist.npz"
    net.save(str(model))
    status, out, err = run(capsys, "explain", str(model), "--data", "mnist", "--data-dir", str(MNIST), "--index",
                           "7", "--device", "cpu")
    assert status == 0, err
    label = int(data.test[1][7])
    assert f"target y = {tuple(float(k == label) for k in range(10))}" in out
    assert "784 values" in out and "… 24 more neurons not shown" in out and len(out.splitlines()) < 300
    worst = float(re.search(r"worst relative error (\S+)", out).group(1).replace("−", "-"))
    assert worst < 1e-2   # float32 backprop against float64 differences


def test_wrong_inputs_are_refused(example_file):
    net = read_json_network(example_file)
    with pytest.raises(ValueError, match=f"at most {MAX_SAMPLES} samples"):
        net.explain(np.zeros((MAX_SAMPLES + 1, 3)), np.zeros((MAX_SAMPLES + 1, 2)))
    with pytest.raises(ValueError, match="lr must be"):
        net.explain(X, Y, lr=0)
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        net.explain([1.0, 2.0], Y)
    with pytest.raises(ValueError, match="Y is required"):
        net.explain(X)


# ---- drawing -------------------------------------------------------------------------------------------
def test_svg_has_one_element_per_neuron_and_per_edge(example_file, tmp_path):
    e = read_json_network(example_file).explain(X, Y)
    path = tmp_path / "net.svg"
    e.draw(path)
    root = ET.parse(path).getroot()
    circles, lines = root.findall(f"{SVG}circle"), root.findall(f"{SVG}line")
    assert len(circles) == 3 + 2 + 2 and all(c.get("class") == "neuron" for c in circles)
    assert len(lines) == 3 * 2 + 2 * 2 and all(l.get("class") == "edge" for l in lines)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "z = 3.3" in texts and "x = 2.0" in texts and "w = 0.9" in texts
    assert f"δ = {num(e.deltas[0][0, 0])}" in texts
    widths = {l.find(f"{SVG}title").text: float(l.get("stroke-width")) for l in lines}
    assert widths[f"w²[1,0] = 0.3, ∂C/∂w = {num(e.nabla_w[1][1, 0])}"] > widths[
        f"w¹[0,0] = 0.1, ∂C/∂w = {num(e.nabla_w[0][0, 0])}"]     # wider where |∂C/∂w| is larger
    colors = {l.get("stroke") for l in lines}
    assert colors == {"#d62728", "#1f77b4"}                     # both signs occur in the example
    html = e._repr_html_()
    assert html.count("<svg") == 1 and "2.0·0.1 + 3.0·0.5" in html and html.count("<table>") == 2
    assert "<td>3.3</td><td>0.9644</td>" in html


def test_wide_svg_still_draws_every_neuron_and_edge(tmp_path):
    e = gpubp.Network([40, 12, 3], device="cpu", seed=0).explain(np.linspace(0, 1, 40), 1)
    root = ET.fromstring(e.svg())
    assert len(root.findall(f"{SVG}circle")) == 55 and len(root.findall(f"{SVG}line")) == 40 * 12 + 12 * 3


@needs_matplotlib
def test_png_opens(example_file, tmp_path):
    from matplotlib.image import imread

    path = tmp_path / "net.png"
    read_json_network(example_file).explain(X, Y).draw(path)
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_png_without_matplotlib_names_the_extra(example_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install gpubp\[cli\]"):
        read_json_network(example_file).explain(X, Y).draw(tmp_path / "net.png")
    assert not list(tmp_path.glob("*.png"))


def test_draw_refuses_other_suffixes(example_file, tmp_path):
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        read_json_network(example_file).explain(X, Y).draw(tmp_path / "net.pdf")


# ---- hand-written JSON networks -----------------------------------------------------------------------------
@pytest.mark.parametrize("change, fragment", [
    ({"weights": [[[0.1, 0.5], [0.3, 0.2]], [[0.6, -0.4], [0.3, 0.8]]]}, "weights[0] must be 2 × 3 numbers"),
    ({"weights": [[[0.1, 0.5, 0.9], [-0.3, 0.2, 0.4]]]}, "weights must be a list of 2 layers"),
    ({"biases": [[-2.0, 0.5], [0.1]]}, "biases[1] must be 2 numbers"),
    ({"biases": [[-2.0, "x"], [0.1, 0.2]]}, "biases[0] must be 2 numbers"),
    ({"sizes": [3, 0, 2]}, "sizes must be a list of at least two positive integers"),
    ({"activation": "sigmoidal"}, "unknown activation 'sigmoidal'"),
    ({"cost": "hinge"}, "unknown cost 'hinge'"),
    ({"cost": "log_likelihood"}, "needs a softmax output"),
    ({"layers": 2}, "unknown 'layers'"),
])
def test_json_network_mistakes_are_named(change, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        network_from_json({**EXAMPLE, **change}, source="net.json")


def test_json_network_missing_field_and_nan():
    with pytest.raises(ValueError, match="missing biases"):
        network_from_json({k: v for k, v in EXAMPLE.items() if k != "biases"})
    with pytest.raises(ValueError, match="non-finite number nan"):
        network_from_json({**EXAMPLE, "biases": [[float("nan"), 0.5], [0.1, -0.2]]})


def test_json_network_holds_the_numbers_written(example_file):
    net = read_json_network(example_file)
    assert net.dtype == np.float64 and net.sizes == [3, 2, 2]
    for l in range(2):
        np.testing.assert_array_equal(net.weights[l], EXAMPLE["weights"][l])
        np.testing.assert_array_equal(net.biases[l], EXAMPLE["biases"][l])


# ---- the command ----------------------------------------------------------------------------------------
def test_cli_explains_the_worked_example(capsys, example_file, tmp_path):
    drawing = tmp_path / "net.svg"
    status, out, err = run(capsys, "explain", str(example_file), "2,3,4", "--target", "1,0", "--step", "0.25",
                           "--draw", str(drawing), "--device", "cpu")
    assert status == 0, err
    assert "2.0·0.1 + 3.0·0.5 + 4.0·0.9 = 5.3, + bias −2.0 → z = 3.3, σ(3.3) = 1/(1 + e^−3.3) ≈ 0.96" in out
    assert "One SGD step, η = 0.25" in out and f"after it {num(by_hand(lr=0.25)['cost_after'], 6)}" in out
    assert len(ET.parse(drawing).getroot().findall(f"{SVG}circle")) == 7
    assert f"drew the network to {drawing}" in out


def test_cli_takes_negative_numbers(capsys, example_file):
    status, out, err = run(capsys, "explain", str(example_file), "-1,0.5,-2e-1", "--target", "-1,0", "--step", "1")
    assert status == 0, err
    assert "input x = a⁰ = (−1.0, 0.5, −0.2)" in out and "target y = (−1.0, 0.0)" in out
    assert "neuron 0: (−1.0)·0.1 + 0.5·0.5 + (−0.2)·0.9 = −0.03, + bias −2.0 → z = −2.03" in out


def test_cli_standardises_input_as_the_model_was_trained(capsys, tmp_path):
    model = tmp_path / "m.npz"
    net = gpubp.Network([3, 2], device="cpu", seed=0)
    net.metadata["standardization"] = {"mean": [1.0, 2.0, 3.0], "std": [2.0, 2.0, 4.0]}
    net.save(str(model))
    status, out, err = run(capsys, "explain", str(model), "3,4,5", "--target", "1", "--device", "cpu")
    assert status == 0, err
    assert "INPUT standardised as in training" in out and "input x = a⁰ = (1.0, 1.0, 0.5)" in out


@needs_matplotlib
def test_cli_draws_a_png_of_a_saved_model_with_a_class_label(capsys, tmp_path):
    model, drawing = tmp_path / "m.npz", tmp_path / "m.png"
    gpubp.Network([4, 3, 3], output="softmax", cost="log_likelihood", device="cpu", seed=0).save(str(model))
    status, out, err = run(capsys, "explain", str(model), "0.5,0.1,0.9,0.3", "--target", "2", "--draw",
                           str(drawing), "--device", "cpu")
    assert status == 0, err
    assert "Cost: C = −Σⱼ yⱼ ln aᴸⱼ = −ln aᴸ₂" in out and "softmax with log_likelihood" in out
    assert drawing.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_digits
def test_cli_takes_a_sample_of_a_data_set(capsys, tmp_path):
    model = tmp_path / "digits.npz"
    gpubp.Network([64, 10], output="softmax", cost="log_likelihood", device="cpu", seed=0).save(str(model))
    status, out, err = run(capsys, "explain", str(model), "--data", "digits", "--index", "7", "--device", "cpu")
    assert status == 0, err
    data = gpubp.datasets.load_digits()
    label = int(data.test[1][7])
    assert f"−ln aᴸ{'₀₁₂₃₄₅₆₇₈₉'[label]}" in out and "64 values" in out
    assert_one_line_error(*run(capsys, "explain", str(model), "--data", "digits", "--index", "300"),
                          "--index 300", "300 samples")


@pytest.mark.parametrize("argv, fragments", [
    (["2,3"], ["INPUT '2,3'", "takes 3 inputs; got 2"]),
    (["2,x,4", "--target", "1,0"], ["'x' is not a number"]),
    (["2,3,4"], ["give --target"]),
    (["2,3,4", "--target", "1,0,0"], ["--target '1,0,0'", "2 outputs; got 3"]),
    (["2,3,4", "--target", "5"], ["class label", "0 to 1"]),
    (["2,3,4", "--target", "1,0", "--step", "-1"], ["--step -1.0"]),
    (["2,3,4", "--target", "1,0", "--draw", "net.pdf"], ["--draw net.pdf", ".svg or .png"]),
    ([], ["give INPUT"]),
    (["2,3,4", "--data", "digits"], ["leave out INPUT"]),
])
def test_cli_errors_are_one_line(capsys, example_file, tmp_path, monkeypatch, argv, fragments):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(*run(capsys, "explain", str(example_file), *argv), *fragments)


@pytest.mark.parametrize("content, fragment", [
    ('{"sizes": [3, 2, 2], ', "not valid JSON"),
    (json.dumps({**EXAMPLE, "weights": [[[1, 2], [3, 4]], [[1, 2], [3, 4]]]}), "weights[0] must be 2 × 3"),
    ("[1, 2]", "expected a JSON object"),
])
def test_cli_bad_json_networks_are_one_line_errors(capsys, tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert_one_line_error(*run(capsys, "explain", str(path), "2,3,4", "--target", "1,0"), str(path), fragment)


def test_cli_missing_network_file(capsys, tmp_path):
    assert_one_line_error(*run(capsys, "explain", str(tmp_path / "none.json"), "1"), "none.json")
