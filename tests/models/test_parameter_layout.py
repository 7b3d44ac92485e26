"""AIR and SQAIR since their networks were rebuilt on the shared blocks of ``ocr_jax.models.modules``: the parameter
trees keep every path and shape of the code before (commit 03716da), so existing checkpoints load unchanged, and
the computations are the same functions of the parameters.

The fixtures were recorded from that code by ``tests/models/fixtures/record_before_refactor.py``: AIR's initial
parameters and outputs (which must stay as they were, to float32 rounding: AIR's initialisation did not change),
and SQAIR's initial parameters and outputs (SQAIR now initialises each parameter group with one ``init``, so fresh
parameters differ; given the old parameters, the outputs must not).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax.models.air import AIR, AIRConfig
from ocr_jax.models.sqair import SQAIR
from tests.models.fixtures.record_before_refactor import AIR_TINY, AIR_VARIANTS, SQAIR_VARIANTS

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _load(name):
    with np.load(os.path.join(FIXTURES, name)) as data:
        return {k: data[k] for k in data.files}


def _flatten(tree):
    return {"/".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _section(arrays, prefix):
    """``{rest of the key: array}`` of the fixture entries under ``prefix/``."""
    return {k[len(prefix) + 1 :]: v for k, v in arrays.items() if k.startswith(prefix + "/")}


def _unflatten(flat):
    tree = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return tree


# Float32 rounding: XLA's CPU kernels (vectorised erf_inv, exp, dot) round differently on different processors, so a
# fixture recorded on one machine is matched to within a few units in the last place on another (measured on the CI
# machine: 3e-8 in an initial weight, 6e-7 in a canvas); a wrong parameter, layout or formula moves them by far
# more than 1e-5.
RTOL, ATOL = 1e-5, 1e-5


def _assert_same(actual: dict, expected: dict, what: str):
    assert sorted(actual) == sorted(expected), what
    for k in expected:
        np.testing.assert_allclose(np.asarray(actual[k]), expected[k], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def air_fixture():
    return _load("air_before_refactor.npz")


@pytest.fixture(scope="module")
def sqair_fixture():
    return _load("sqair_before_refactor.npz")


@pytest.mark.parametrize("variant", sorted(AIR_VARIANTS))
def test_air_parameters_and_outputs_are_unchanged(air_fixture, variant):
    """The same parameter tree, initial values and outputs, to float32 rounding."""
    images = jnp.asarray(np.random.default_rng(0).random((2, 12, 12)), jnp.float32)
    model = AIR(AIRConfig(**{**AIR_TINY, **AIR_VARIANTS[variant]}))
    params = model.init(jax.random.key(0), images)
    _assert_same(_flatten(params), _section(air_fixture, f"{variant}/params"), "params")
    out = model.infer(params, images, jax.random.key(1), num_particles=2, continue_prob=0.5)
    outputs = dict(out._asdict(), baselines=model.baseline_values(params, out))
    _assert_same(outputs, _section(air_fixture, f"{variant}/out"), "infer")
    sample = model.generate(params, jax.random.key(2), 3)
    _assert_same(sample._asdict(), _section(air_fixture, f"{variant}/sample"), "generate")


@pytest.mark.parametrize("variant", sorted(SQAIR_VARIANTS))
def test_sqair_parameter_tree_is_unchanged_and_old_parameters_give_the_same_outputs(sqair_fixture, variant):
    """Every parameter path and shape as before (no upgrade of old checkpoints is needed), and the old parameters
    give the old outputs, to float32 rounding."""
    model = SQAIR(SQAIR_VARIANTS[variant]())
    old = _section(sqair_fixture, f"{variant}/params")
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    assert {k: v.shape for k, v in _flatten(shapes).items()} == {k: v.shape for k, v in old.items()}
    # The initial values not drawn at random (every bias, the learned initial states, the discovery-count table)
    # are as before.
    new = _flatten(model.init(jax.random.key(0)))
    deterministic = [k for k in old if k.endswith(("bias", "/value", "/logits"))]
    assert len(deterministic) > 20
    _assert_same({k: new[k] for k in deterministic}, {k: old[k] for k in deterministic}, "initial biases")
    params = _unflatten(old)
    frames = jnp.asarray(np.random.default_rng(1).random((2, 3, 12, 12)), jnp.float32)
    out = model.infer(params, frames, jax.random.key(1), 2)
    _assert_same(_recorded_names(model, out), _section(sqair_fixture, f"{variant}/out"), "infer")
    gen = model.generate(params, jax.random.key(2), 2, 3)
    _assert_same(_recorded_names(model, gen), _section(sqair_fixture, f"{variant}/gen"), "gen")


def _recorded_names(model, out) -> dict:
    """SQAIR's outputs under the fixture's names: it was recorded when ``z_where`` held the Gaussian latent, which the
    outputs now call ``z_where_raw`` (their ``z_where`` is its spatial transform, as in AIR). Checks that the new
    ``z_where`` is exactly ``to_transform(z_where_raw)`` (both computed op by op here, outside jit), so comparing
    ``z_where_raw`` with the recorded ``z_where`` checks both."""
    out = dict(out)
    raw = out.pop("z_where_raw")
    np.testing.assert_array_equal(np.asarray(out.pop("z_where")), np.asarray(model.to_transform(raw)))
    return dict(out, z_where=raw)
