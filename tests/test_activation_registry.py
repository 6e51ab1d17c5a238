"""The one activation registry (gpubp/activations.py): every record is complete, the CUDA header
kernels/activations.cuh names the same activations with the same ids, the one-element forms the fused CPU
backend compiles agree with the array forms, ELU and SELU are what PyTorch computes, each activation's
initialisation family is used; the backends choose fused cost paths by ``Cost.kernel_id``, their modules
import no costs and no cycle, and the kernels built from the registry load from Numba's disk cache."""

from __future__ import annotations

import ast
import graphlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.activations import ACTIVATIONS, SELU_ALPHA, SELU_SCALE, Activation
from gpubp.backend import kernels
from gpubp.initializers import WEIGHT_STD, weight_std

HEADER = kernels.kernel_dir() / "activations.cuh"
BACKEND = Path(kernels.__file__).resolve().parent
#: z where Python's math does not overflow (it raises where compiled code gives inf)
Z = np.concatenate([np.linspace(-12.0, 12.0, 97), [0.0, -0.0, 1e-9, -1e-9, 40.0, -40.0, 700.0, -700.0]])


# ---- the records ------------------------------------------------------------------------------------
@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=str)
def test_every_record_is_complete(act):
    assert isinstance(act.kernel_id, int) and act.elementwise
    assert act.init in WEIGHT_STD
    assert callable(act.scalar_f) and callable(act.scalar_df)
    assert type(act).onnx is not Activation.onnx


def test_kernel_ids_number_the_registry():
    assert sorted(act.kernel_id for act in ACTIVATIONS.values()) == list(range(len(ACTIVATIONS)))
    assert kernels.ACTIVATION_IDS == {name: act.kernel_id for name, act in ACTIVATIONS.items()}


@pytest.mark.parametrize("act", list(ACTIVATIONS.values()), ids=str)
def test_scalar_forms_agree_with_the_array_forms(act):
    """scalar_f and scalar_df in plain Python (float64; no Numba): what cpu_kernels compiles, within the
    ulps that libm and NumPy differ by; NaN propagates."""
    t = np.float64
    with np.errstate(all="ignore"):
        a = act.f(np, Z, np.empty_like(Z))
        da = act.df(np, Z, a, np.empty_like(Z))
        scalar_a = np.array([act.scalar_f(t(z), t) for z in Z])
        scalar_da = np.array([act.scalar_df(t(z), t(ai), t) for z, ai in zip(Z, a)])
    np.testing.assert_allclose(scalar_a, a, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(scalar_da, da, rtol=1e-12, atol=1e-14)
    assert math.isnan(act.scalar_f(t("nan"), t))


def test_elu_and_selu_are_pytorchs():
    elu, selu = ACTIVATIONS["elu"], ACTIVATIONS["selu"]
    z = np.array([-30.0, -1.0, -1e-12, 0.0, 1e-12, 2.0])
    np.testing.assert_allclose(elu.f(np, z, np.empty_like(z)), np.where(z > 0, z, np.expm1(z)), rtol=1e-15)
    expected = SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(z))
    np.testing.assert_allclose(selu.f(np, z, np.empty_like(z)), expected, rtol=1e-15)
    a = selu.f(np, z, np.empty_like(z))
    np.testing.assert_allclose(selu.df(np, z, a, np.empty_like(z)),  # a + λα: λα eᶻ less a's rounding
                               np.where(z > 0, SELU_SCALE, SELU_SCALE * SELU_ALPHA * np.exp(z)), rtol=1e-12,
                               atol=1e-15)
    torch = pytest.importorskip("torch", reason="torch is not installed")
    zt = torch.tensor(z)
    np.testing.assert_allclose(selu.f(np, z, np.empty_like(z)), torch.nn.functional.selu(zt).numpy(), rtol=1e-15)
    np.testing.assert_allclose(elu.f(np, z, np.empty_like(z)), torch.nn.functional.elu(zt).numpy(), rtol=1e-15)


# ---- kernels/activations.cuh against the registry ---------------------------------------------------------
def _body(source: str, signature: str) -> str:
    """The brace-delimited body of the first function or enum whose text starts with ``signature``."""
    start = source.index("{", source.index(signature))
    depth = 0
    for end in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[end], 0)
        if depth == 0:
            return source[start:end + 1]
    raise ValueError(f"unbalanced braces after {signature!r}")


def _header_names(body: str, pattern: str = r"\bACT_(\w+)") -> set[str]:
    return {name.lower() for name in re.findall(pattern, body)}


@pytest.fixture(scope="module")
def header() -> str:
    return HEADER.read_text(encoding="utf-8")


def test_header_enum_is_the_registry(header):
    enum = dict(re.findall(r"\bACT_(\w+) = (\d+),", _body(header, "enum Activation")))
    assert {name.lower(): int(ident) for name, ident in enum.items()} == kernels.ACTIVATION_IDS
    assert re.search(r"constexpr int N_ACTIVATIONS = (\d+);", header).group(1) == str(len(ACTIVATIONS))


@pytest.mark.parametrize("function", ["GPUBP_HD T act_f(", "GPUBP_HD T act_df(",
                                      "GPUBP_HD bool dispatch_activation(", "const char* activation_name("])
def test_header_has_a_case_for_every_activation(header, function):
    assert _header_names(_body(header, function)) == set(ACTIVATIONS)


def test_header_names_each_id_as_the_registry(header):
    body = _body(header, "const char* activation_name(")
    assert dict(re.findall(r'case ACT_(\w+): return "(\w+)";', body)) == {
        name.upper(): name for name in ACTIVATIONS}


def _reads_a(act: Activation) -> bool:
    """Whether σ′ depends on a (the same z, two different a)."""
    z = np.zeros(3)
    return not np.array_equal(act.df(np, z, np.full(3, 0.25), np.empty(3)),
                              act.df(np, z, np.full(3, -0.5), np.empty(3)))


def test_header_loads_what_each_derivative_reads(header):
    """The backward kernel loads z only for act_needs_z (the registry's needs_z) and a only for
    act_needs_a (σ′ from a): a wrong list would feed σ′ zeros."""
    needs_z = _header_names(_body(header, "GPUBP_HD constexpr bool act_needs_z("))
    needs_a = _header_names(_body(header, "GPUBP_HD constexpr bool act_needs_a("))
    assert needs_z == {name for name, act in ACTIVATIONS.items() if act.needs_z}
    assert needs_a == {name for name, act in ACTIVATIONS.items() if not act.needs_z and _reads_a(act)}


# ---- initialisation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, std", [("selu", math.sqrt(1 / 400)), ("elu", math.sqrt(2 / 400)),
                                       ("relu", math.sqrt(2 / 400)), ("tanh", math.sqrt(2 / 500))])
def test_each_family_sets_the_weights_spread(name, std):
    assert weight_std(ACTIVATIONS[name], 400, 100) == pytest.approx(std, rel=1e-15)
    net = gpubp.Network([400, 100, 100], activation=name, device="cpu", dtype="float64", seed=0)
    assert net.weights[0].std() == pytest.approx(std, rel=0.02)


def test_an_unknown_family_is_named():
    class Odd(Activation):
        name, init = "odd", "orthogonal"

    with pytest.raises(ValueError, match="'odd' has init 'orthogonal'; valid: he, lecun, xavier"):
        weight_std(Odd(), 3, 2)


# ---- imports of the backend ------------------------------------------------------------------------------
def _runtime_imports(path: Path) -> set[str]:
    """The modules ``path`` (a gpubp/backend module) imports outside ``if TYPE_CHECKING:``, functions included;
    ``from . import x`` counts as importing ``gpubp.backend.x``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
                 for node in ast.walk(block)}
    package = ["gpubp", "backend"]
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                found.add(module)
            else:
                found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_the_fused_cost_paths_follow_the_cost_kernel_id():
    """Built-in costs and their subclasses carry a kernel id (the fused paths), user costs none."""
    from gpubp.backend.ops import cost_id, is_stable
    from gpubp.costs import COSTS, CustomCost, LogLikelihood

    class Tempered(LogLikelihood):
        name = "tempered"

    assert {name: cost_id(cost) for name, cost in COSTS.items()} == kernels.COST_IDS
    assert cost_id(Tempered()) == kernels.COST_IDS["log_likelihood"]
    assert is_stable(Tempered(), gpubp.activations.SOFTMAX) and not is_stable(COSTS["quadratic"], ACTIVATIONS["sigmoid"])
    assert cost_id(CustomCost(lambda a, y: a.sum(1), lambda a, y: 1 + 0 * a)) is None


def test_backend_imports_no_costs_and_no_cycle():
    graph = {f"gpubp.backend.{path.stem}": _runtime_imports(path) for path in BACKEND.glob("*.py")}
    graph["gpubp.backend"] = graph.pop("gpubp.backend.__init__")
    assert not [module for module, imports in graph.items() if "gpubp.costs" in imports]
    within = {module: {m for m in imports if m in graph} for module, imports in graph.items()}
    assert within["gpubp.backend.numba_ops"] >= {"gpubp.backend.cpu_kernels"}  # the walk sees relative imports
    tuple(graphlib.TopologicalSorter(within).static_order())  # CycleError names a cycle


# ---- the fused CPU kernels' on-disk cache -----------------------------------------------------------------
CACHED_RUN = """
import json
import numpy as np
import gpubp
from gpubp.backend import cpu_kernels
X = np.random.default_rng(0).random((20, 6), dtype=np.float32)
from gpubp.activations import ACTIVATIONS
for act, output, cost in (("selu", "softmax", "log_likelihood"), ("sigmoid", "sigmoid", "quadratic")):
    for compiled in (False, True):  # the kernels called one by one, then the chunk kernel calling them
        net = gpubp.Network([6, 5, 3], activation=act, output=output, cost=cost, device="cpu", seed=0)
        assert net.ops.name == "numba"
        net.fit(X, np.arange(20) % 3, epochs=1, batch_size=10, lr=0.1, optimizer="adam", progress=False,
                compiled=compiled)
kernels = {name: f for name, f in vars(cpu_kernels).items() if hasattr(f, "stats")}
kernels.update({f"{act}.{name}": f for act, fs in cpu_kernels.KERNELS.items() for name, f in fs._asdict().items()})
selu, sigmoid = ACTIVATIONS["selu"].kernel_id, ACTIVATIONS["sigmoid"].kernel_id
kernels["chunk.selu"] = cpu_kernels.chunk_kernel(selu, selu, True, 2, True, cpu_kernels.ADAM)
kernels["chunk.sigmoid"] = cpu_kernels.chunk_kernel(sigmoid, sigmoid, False, 0, False, cpu_kernels.ADAM)
print(json.dumps({name: (len(f.stats.cache_hits), len(f.stats.cache_misses)) for name, f in kernels.items()
                  if f.signatures}))
"""


def _compiled_kernels(env: dict) -> dict[str, list[int]]:
    """kernel -> [cache hits, cache misses] of the ones a training run of CACHED_RUN used."""
    run = subprocess.run([sys.executable, "-c", CACHED_RUN], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.slow
def test_the_fused_kernels_load_from_the_disk_cache_in_a_new_process(tmp_path):
    """Kernels built from the registry stay cacheable: a second process compiles none of them."""
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"), "GPUBP_CPU_BACKEND": "numba"}
    first, second = _compiled_kernels(env), _compiled_kernels(env)
    assert all(misses for hits, misses in first.values())
    used = {"selu.layer_forward", "selu.layer_backward", "identity.output_delta", "sigmoid.output_delta",
            "layer_forward_softmax", "adam_update", "chunk.selu", "chunk.sigmoid"}
    assert used <= second.keys() <= first.keys()
    assert all(hits and not misses for hits, misses in second.values()), second
