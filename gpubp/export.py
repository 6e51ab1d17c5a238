"""A trained network for use outside gpubp: ONNX (for onnxruntime and every ONNX runtime) or safetensors
(for PyTorch and others). Both hold exactly the forward pass zˡ = aˡ⁻¹Wˡᵀ + bˡ, aˡ = σ(zˡ).

ONNX (``pip install gpubp[onnx]``): opset ONNX_OPSET, float32, input ``input`` (batch, sizes[0]) and
output ``output`` (batch, sizes[-1]) with a dynamic batch axis ``batch``. Each layer is one
``Gemm(aˡ⁻¹, Wˡ, bˡ, transB=1)`` with output ``layers.{l}.z`` and its activation in standard operators, each
activation's ``onnx`` recipe (gpubp/activations.py): Sigmoid, Tanh, Relu, LeakyRelu(alpha=0.01), Softplus,
Elu(alpha=1), Selu(alpha, gamma), Softmax(axis=-1), Identity; swish as z·Sigmoid(z), gelu (tanh form) as
½z(1 + Tanh(√(2/π)(z + 0.044715z³))), mish as z·Tanh(Softplus(z)). The model's ``metadata`` (class names,
standardisation, …) is stored as the metadata property ``gpubp.metadata``.

Safetensors (``pip install gpubp[safetensors]``): tensors ``layers.{l}.weight`` (n_out, n_in) and
``layers.{l}.bias`` (n_out,) in the network's dtype, as ``torch.nn.Linear`` holds them; the metadata (all
strings) has ``format`` "gpubp", ``sizes``, ``activations`` (one name per layer) and ``gpubp.metadata``,
each JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .files import write_atomically

ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "output"
FORMATS = (".onnx", ".safetensors")


def export(net: Any, path: str | os.PathLike) -> None:
    """Write ``net`` to ``path`` as ONNX (``.onnx``) or safetensors (``.safetensors``), chosen by the suffix;
    nothing is written when anything fails."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        write_atomically(path, to_onnx(net).SerializeToString())
    elif suffix == ".safetensors":
        write_atomically(path, to_safetensors(net))
    else:
        raise ValueError(f"{os.fspath(path)}: export writes {' or '.join(FORMATS)} files; got "
                         f"{suffix or 'no suffix'}")


def _require(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as exc:
        raise ImportError(f"exporting needs {module}, which is not installed; run: pip install gpubp[{extra}]") \
            from exc


def layer_activations(net: Any) -> list[str]:
    return [act.name for act in net.layer_activations]


# ---- ONNX -------------------------------------------------------------------------------------------
class _Graph:
    """ONNX nodes and float32 initializers, with fresh value names under the current layer's ``prefix``: the
    ``graph`` that the activations' ``onnx`` recipes build on."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0
        self.prefix = ""

    def constant(self, name: str, value: Any) -> str:
        """A float32 initializer called ``{prefix}.{name}``; returns its name."""
        name = f"{self.prefix}.{name}"
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        """A node ``op_type(inputs)`` with ONNX attributes ``attrs``; returns its output's name."""
        self.count += 1
        output = output or f"{self.prefix}.{op_type.lower()}{self.count}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], name=f"{self.prefix}.{op_type}{self.count}",
                                                **attrs))
        return output

    def rename(self, value: str, name: str) -> None:
        """Call the last node's output ``value`` by ``name`` instead (the graph's output)."""
        node = self.nodes[-1]
        if node.output[0] != value:
            raise ValueError(f"{value!r} is not the output of the graph's last node {node.name!r}")
        node.output[0] = name


def to_onnx(net: Any) -> Any:
    """The ``onnx.ModelProto`` of ``net`` (see the module docstring), checked by ``onnx.checker``."""
    onnx = _require("onnx", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = _Graph(helper, numpy_helper)
    a = INPUT_NAME
    names = layer_activations(net)
    for l, (W, b, act) in enumerate(zip(net.weights, net.biases, net.layer_activations)):
        graph.prefix = f"layers.{l}"
        weight = graph.constant("weight", net.ops.to_numpy(W))
        bias = graph.constant("bias", net.ops.to_numpy(b))
        z = graph.op("Gemm", [a, weight, bias], f"{graph.prefix}.z", transB=1)
        a = act.onnx(graph, z)
    graph.rename(a, OUTPUT_NAME)
    model = helper.make_model(
        helper.make_graph(graph.nodes, "gpubp_network",
                          [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", net.sizes[0]])],
                          [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", net.sizes[-1]])],
                          graph.initializers),
        producer_name="gpubp", opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        doc_string=f"gpubp network {net.sizes}, activations {names}")
    model.ir_version = 8  # the IR of opset 17: readable by onnxruntime >= 1.13
    helper.set_model_props(model, {"gpubp.metadata": json.dumps(net.metadata), "gpubp.sizes": json.dumps(net.sizes),
                                   "gpubp.activations": json.dumps(names)})
    onnx.checker.check_model(model, full_check=True)
    return model


# ---- safetensors ------------------------------------------------------------------------------------
def to_safetensors(net: Any) -> bytes:
    """The safetensors file contents of ``net`` (see the module docstring)."""
    _require("safetensors", "safetensors")
    from safetensors.numpy import save

    tensors = {}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        tensors[f"layers.{l}.weight"] = np.ascontiguousarray(net.ops.to_numpy(W))
        tensors[f"layers.{l}.bias"] = np.ascontiguousarray(net.ops.to_numpy(b))
    metadata = {"format": "gpubp", "sizes": json.dumps(net.sizes), "activations": json.dumps(layer_activations(net)),
                "gpubp.metadata": json.dumps(net.metadata)}
    return save(tensors, metadata=metadata)
