"""Shared building blocks: the hoisted-input RNN cell equals flax's standard cells fed the concatenated input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax.models import modules

S, X, F = 7, 3, 5  # static input, step input, features


def _flax_to_hoisted(kind, p):
    """Map a flax cell's parameters onto HoistedInputRNNCell's (static rows [:S], step rows [S:])."""
    cat = lambda names, part: jnp.concatenate([p[n]["kernel"][part] for n in names], axis=1)
    if kind == "lstm":
        gates_i, gates_h = ["ii", "ig", "if", "io"], ["hi", "hg", "hf", "ho"]
        static_bias = jnp.concatenate([p[n]["bias"] for n in gates_h])
        hidden = {"kernel": jnp.concatenate([p[n]["kernel"] for n in gates_h], axis=1)}
    elif kind == "gru":
        gates_i, gates_h = ["ir", "iz", "in"], ["hr", "hz", "hn"]
        static_bias = jnp.concatenate([p[n]["bias"] for n in gates_i])
        hidden = {
            "kernel": jnp.concatenate([p[n]["kernel"] for n in gates_h], axis=1),
            "bias": jnp.concatenate([jnp.zeros(2 * F), p["hn"]["bias"]]),
        }
    else:
        gates_i = ["i"]
        static_bias = p["i"]["bias"]
        hidden = {"kernel": p["h"]["kernel"]}
    return {
        "static": {"kernel": cat(gates_i, slice(0, S)), "bias": static_bias},
        "step": {"kernel": cat(gates_i, slice(S, None))},
        "hidden": hidden,
    }


@pytest.mark.parametrize("kind", ["lstm", "gru", "vanilla"])
def test_hoisted_cell_equals_flax_cell_on_concatenated_input(kind):
    flax_cell = modules.make_rnn_cell(kind, F)
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    static = jax.random.normal(k1, (2, S))
    steps = jax.random.normal(k2, (4, 2, X))
    carry = modules.rnn_zero_state(kind, F, (2,))
    carry = jax.tree.map(lambda z: z + 0.3 * jax.random.normal(k3, z.shape), carry)
    params = flax_cell.init(k4, carry, jnp.zeros((2, S + X)))["params"]
    hoisted = modules.HoistedInputRNNCell(kind, F)
    hp = {"params": _flax_to_hoisted(kind, params)}
    projected = hoisted.apply(hp, static, method=modules.HoistedInputRNNCell.project)
    c_ref, c_new = carry, carry
    for x in steps:  # several steps: the projection is reused, the recurrence matches
        c_ref, h_ref = flax_cell.apply({"params": params}, c_ref, jnp.concatenate([static, x], -1))
        c_new, h_new = hoisted.apply(hp, c_new, projected, x)
        np.testing.assert_allclose(h_new, h_ref, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), c_new, c_ref)
    # and the parameter shapes are exactly those the cell creates itself
    own = hoisted.init(k4, carry, projected, steps[0])["params"]
    own_static = hoisted.init(k4, static, method=modules.HoistedInputRNNCell.project)["params"]
    shapes = jax.tree.map(jnp.shape, {**own, **own_static})
    assert shapes == jax.tree.map(jnp.shape, hp["params"])
