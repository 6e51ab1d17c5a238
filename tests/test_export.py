"""Models out: ONNX run in onnxruntime and safetensors loaded into torch give net.forward to 1e-5 for every
activation and softmax; the README's torch snippet works as written; bad export targets write nothing."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.activations import ACTIVATIONS
from gpubp.cli import main

ROOT = Path(__file__).resolve().parents[1]
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need onnxruntime (pip install gpubp[onnx])")

CASES = [(act, out) for act in ACTIVATIONS for out in (act, "softmax")]


def trained_net(activation: str, output: str, dtype: str = "float32") -> gpubp.Network:
    """A small net whose parameters are not the initial ones (a few steps of training)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 6))
    y = rng.integers(0, 4, 64)
    cost = "log_likelihood" if output == "softmax" else "quadratic"
    net = gpubp.Network([6, 9, 7, 4], activation=activation, output=output, cost=cost, device="cpu",
                        dtype=dtype, seed=1)
    net.fit(X, y, epochs=2, batch_size=16, lr=0.01, progress=False, seed=0)
    return net


def held_out() -> np.ndarray:
    return (np.random.default_rng(1).normal(size=(33, 6)) * 2.0).astype(np.float32)


@pytest.mark.parametrize("activation, output", CASES)
def test_onnx_in_onnxruntime_equals_forward(tmp_path, activation, output):
    net = trained_net(activation, output)
    path = tmp_path / "m.onnx"
    net.export(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["output"]
    assert session.get_inputs()[0].shape == ["batch", 6] and session.get_inputs()[0].type == "tensor(float)"
    X = held_out()
    for batch in (X, X[:1]):  # the batch axis is dynamic
        (result,) = session.run(["output"], {"input": batch})
        assert result.dtype == np.float32
        np.testing.assert_allclose(result, net.forward(batch), atol=1e-5, rtol=1e-5)


def test_onnx_uses_standard_operators_and_keeps_the_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    net = trained_net("gelu", "softmax", dtype="float64")
    net.metadata["class_names"] = ["a", "b", "c", "d"]
    path = tmp_path / "m.onnx"
    net.export(str(path))
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert ops <= {"Gemm", "Mul", "Add", "Tanh", "Softmax"} and "Gemm" in ops
    assert all(init.data_type == onnx.TensorProto.FLOAT for init in model.graph.initializer)
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["gpubp.metadata"])["class_names"] == ["a", "b", "c", "d"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    X = held_out()
    np.testing.assert_allclose(session.run(None, {"input": X})[0], net.forward(X), atol=1e-5)


def readme_torch_snippet() -> str:
    """The Python block of README.md that loads a .safetensors file into torch."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (snippet,) = [b for b in blocks if "torch.nn.Sequential" in b and "safetensors" in b]
    return snippet


@pytest.mark.parametrize("activation, output", CASES)
def test_safetensors_into_torch_with_the_readme_snippet_equals_forward(tmp_path, monkeypatch, activation, output):
    torch = pytest.importorskip("torch", reason="needs PyTorch")
    pytest.importorskip("safetensors")
    net = trained_net(activation, output)
    monkeypatch.chdir(tmp_path)
    net.export("model.safetensors")
    scope: dict = {}
    exec(readme_torch_snippet(), scope)  # noqa: S102 - the documented snippet, as a user would run it
    model = scope["model"]
    assert isinstance(model, torch.nn.Sequential)
    assert [type(m).__name__ for m in model][::2] == ["Linear"] * 3
    X = held_out()
    with torch.no_grad():
        result = model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(result, net.forward(X), atol=1e-5, rtol=1e-5)


def test_safetensors_names_shapes_and_metadata(tmp_path):
    from safetensors import safe_open

    net = trained_net("relu", "softmax", dtype="float64")
    net.metadata["task"] = "classification"
    path = tmp_path / "m.safetensors"
    net.export(str(path))
    with safe_open(str(path), "np") as f:
        assert sorted(f.keys()) == [f"layers.{l}.{k}" for l in range(3) for k in ("bias", "weight")]
        for l, (W, b) in enumerate(zip(net.weights, net.biases)):
            np.testing.assert_array_equal(f.get_tensor(f"layers.{l}.weight"), W)  # (n_out, n_in), exact
            np.testing.assert_array_equal(f.get_tensor(f"layers.{l}.bias"), b)
        meta = f.metadata()
    assert json.loads(meta["activations"]) == ["relu", "relu", "softmax"]
    assert json.loads(meta["sizes"]) == [6, 9, 7, 4] and json.loads(meta["gpubp.metadata"])["task"] == "classification"


def test_export_from_the_cli(capsys, tmp_path):
    model = tmp_path / "m.npz"
    trained_net("tanh", "softmax").save(str(model))
    for name in ("m.onnx", "m.safetensors"):
        assert main(["export", str(model), str(tmp_path / name)]) == 0
        assert (tmp_path / name).stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("target, fragment", [("m.pt", "must end in .onnx or .safetensors"),
                                              ("missing/m.onnx", "does not exist")])
def test_export_to_a_bad_target_writes_nothing(capsys, tmp_path, target, fragment):
    model = tmp_path / "m.npz"
    trained_net("tanh", "softmax").save(str(model))
    assert main(["export", str(model), str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpubp: error: ") and err.count("\n") == 1 and fragment in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    with pytest.raises(ValueError, match="export writes .onnx or .safetensors"):
        gpubp.load(str(model)).export(str(tmp_path / "m.pt"))


def test_export_without_the_extra_names_it(capsys, tmp_path, monkeypatch):
    model = tmp_path / "m.npz"
    trained_net("tanh", "softmax").save(str(model))
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(model), str(tmp_path / "m.onnx")]) == 2
    assert "pip install gpubp[onnx]" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
