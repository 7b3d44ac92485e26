"""Shared building blocks: the hoisted-input RNN cell equals flax's standard cells fed the concatenated input."""

import flax.linen as nn
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


def test_mlp_final_layer_options_and_names():
    """The last layer's kernel is LeCun-normal scaled in variance by ``final_kernel_scale`` (the same draws), its bias
    ``final_bias_init``; the other layers keep Linen's defaults; ``layer_name`` names the layers."""
    x = jnp.ones((2, 6))
    key = jax.random.key(0)
    plain = modules.MLP((5, 4)).init(key, x)["params"]
    scaled = modules.MLP((5, 4), final_kernel_scale=0.04, final_bias_init=nn.initializers.constant(2.0)).init(key, x)
    scaled = scaled["params"]
    assert set(plain) == {"dense_0", "dense_1"}
    jax.tree.map(np.testing.assert_array_equal, scaled["dense_0"], plain["dense_0"])
    np.testing.assert_allclose(scaled["dense_1"]["kernel"], 0.2 * plain["dense_1"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(scaled["dense_1"]["bias"], 2.0)
    assert set(modules.MLP((5, 4), layer_name="Dense").init(key, x)["params"]) == {"Dense_0", "Dense_1"}


@pytest.mark.parametrize("hidden", [(), (7,)])
def test_gaussian_head_joint_and_separate_layouts_are_the_same_function(hidden):
    """``joint=True`` (one output layer for [loc, raw scale], the offset b added as a constant) and ``joint=False``
    (separate loc and scale layers, the scale's bias starting at b) compute the same (loc, scale) from corresponding
    parameters; both start with scale ``scale_init`` and loc ``loc_bias`` when the kernels are zero."""
    x = jax.random.normal(jax.random.key(1), (3, 6))
    kw = dict(loc_bias=(0.5, -1.0), scale_init=0.3, min_scale=0.01, kernel_scale=0.5, hidden=hidden)
    joint = modules.GaussianHead(2, joint=True, **kw)
    separate = modules.GaussianHead(2, **kw)
    jp = joint.init(jax.random.key(2), x)["params"]
    sp = separate.init(jax.random.key(2), x)["params"]
    n = len(hidden)
    out_layer = jp["MLP_0"][f"dense_{n}"]
    b = modules.inverse_softplus(0.3 - 0.01)
    np.testing.assert_allclose(sp["scale"]["bias"], [b, b], rtol=1e-6)
    np.testing.assert_array_equal(out_layer["bias"], [0.5, -1.0, 0.0, 0.0])
    mapped = {
        "loc": {"kernel": out_layer["kernel"][:, :2], "bias": out_layer["bias"][:2]},
        "scale": {"kernel": out_layer["kernel"][:, 2:], "bias": out_layer["bias"][2:] + b},
    }
    if hidden:
        mapped["mlp"] = {"dense_0": jp["MLP_0"]["dense_0"]}
    assert jax.tree.map(jnp.shape, mapped) == jax.tree.map(jnp.shape, sp)
    (jl, js), (sl, ss) = joint.apply({"params": jp}, x), separate.apply({"params": mapped}, x)
    np.testing.assert_allclose(jl, sl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(js, ss, rtol=1e-5, atol=1e-6)
    zero = jax.tree.map(lambda a: jnp.zeros_like(a) if a.ndim == 2 else a, jp)
    loc, scale = joint.apply({"params": zero}, x)
    np.testing.assert_allclose(loc, np.broadcast_to([0.5, -1.0], (3, 2)), rtol=1e-6)
    np.testing.assert_allclose(scale, np.full((3, 2), 0.3), rtol=1e-6)


def test_logit_head_starts_at_its_bias():
    head = modules.LogitHead((4,), bias_init=1.5, kernel_scale=0.0, activation=nn.elu)
    params = head.init(jax.random.key(0), jnp.ones((6,)))["params"]
    assert set(params["MLP_0"]) == {"dense_0", "dense_1"}
    np.testing.assert_array_equal(params["MLP_0"]["dense_1"]["kernel"], 0.0)  # kernel_scale 0: the bias alone
    out = head.apply({"params": params}, jax.random.normal(jax.random.key(1), (3, 6)))
    np.testing.assert_array_equal(out, np.full((3,), 1.5, np.float32))


@pytest.mark.parametrize(
    "size, strides, padding, kernel",
    [
        ((7, 7), (2, 2), ((1, 1), (1, 1)), (3, 3)),  # CONV-VRNN's 7 -> 13
        ((25, 25), (2, 2), ((1, 2), (1, 2)), (3, 3)),  # 25 -> 50
        ((13, 13), (1, 1), ((1, 1), (1, 1)), (3, 3)),  # stride 1
        ((5, 6), (3, 2), ((0, 2), (2, 0)), (3, 3)),  # stride 3 (a phase with one tap), uneven padding
        ((4, 5), (2, 3), ((1, 1), (0, 3)), (2, 4)),  # even and wide kernels
        ((3, 4), (4, 1), ((0, 0), (1, 1)), (3, 3)),  # stride > kernel: a phase no tap reaches is zero
    ],
)
def test_conv_transpose_phases_equals_lax_conv_transpose_in_value_and_gradient(size, strides, padding, kernel):
    from jax import lax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)
    cotangent = None

    def both(fn):
        y = fn(x, k, strides, padding)
        nonlocal cotangent
        cotangent = jnp.asarray(rng.normal(size=y.shape), jnp.float32) if cotangent is None else cotangent
        return y, jax.grad(lambda x, k: jnp.sum(fn(x, k, strides, padding) * cotangent), argnums=(0, 1))(x, k)

    want, want_grads = both(
        lambda x, k, s, p: lax.conv_transpose(x, k, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    got, got_grads = both(modules.conv_transpose_phases)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_phase_conv_transpose_has_flax_conv_transpose_parameters_and_outputs():
    kwargs = dict(features=5, kernel_size=(3, 3), strides=(2, 2), padding=((1, 2), (1, 2)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 7, 7, 4)), jnp.float32)  # two leading axes
    ours = modules.PhaseConvTranspose(**kwargs, bias_init=nn.initializers.constant(0.5))
    flax_layer = nn.ConvTranspose(**kwargs, bias_init=nn.initializers.constant(0.5))
    params = ours.init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_layer.init(jax.random.key(3), x))
    np.testing.assert_array_equal(params["params"]["kernel"], flax_layer.init(jax.random.key(3), x)["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(params, x), flax_layer.apply(params, x), rtol=1e-5, atol=1e-5)
    assert ours.apply(params, x).shape == (2, 3, 14, 14, 5)


@pytest.mark.parametrize(
    "size, strides, padding, kernel",
    [
        ((10, 10), (1, 1), "SAME", (3, 3)),
        ((25, 25), (2, 2), "SAME", (3, 3)),  # odd size, stride 2: SAME pads (0, 1)
        ((9, 12), (2, 1), "VALID", (3, 2)),
        ((7, 7), (1, 2), ((2, 0), (1, 1)), (3, 3)),
    ],
)
@pytest.mark.parametrize("materialise_cotangent", [True, False])
def test_conv_patches_equals_lax_convolution_in_value_and_gradient(
    size, strides, padding, kernel, materialise_cotangent
):
    from jax import lax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, *size, 3)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(*kernel, 3, 4)), jnp.float32)
    conv = lambda x, k: lax.conv_general_dilated(  # noqa: E731
        x, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    want = conv(x, k)
    got = modules.conv_patches(x, k, strides, padding, materialise_cotangent)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    cotangent = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
    want_grads = jax.grad(lambda x, k: jnp.sum(conv(x, k) * cotangent), argnums=(0, 1))(x, k)
    got_grads = jax.grad(
        lambda x, k: jnp.sum(modules.conv_patches(x, k, strides, padding, materialise_cotangent) * cotangent),
        argnums=(0, 1),
    )(x, k)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation", ["patches", "xla", "auto"])
def test_patch_conv_has_flax_conv_parameters_and_outputs(implementation):
    kwargs = dict(features=5, kernel_size=(3, 3), strides=(2, 2), padding="SAME")
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 9, 9, 4)), jnp.float32)  # two leading axes
    ours = modules.PatchConv(**kwargs, implementation=implementation, bias_init=nn.initializers.constant(0.5))
    flax_layer = nn.Conv(**kwargs, bias_init=nn.initializers.constant(0.5))
    params = ours.init(jax.random.key(3), x)
    flax_params = flax_layer.init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_params)
    jax.tree.map(np.testing.assert_array_equal, params, flax_params)  # the same initial values
    np.testing.assert_allclose(ours.apply(params, x), flax_layer.apply(params, x), rtol=1e-5, atol=1e-5)
    assert ours.apply(params, x).shape == (2, 3, 5, 5, 5)


def test_patch_conv_refuses_an_unknown_implementation():
    layer = modules.PatchConv(features=2, kernel_size=(3, 3), implementation="cudnn")
    with pytest.raises(ValueError, match="implementation must be 'auto', 'patches' or 'xla'; got 'cudnn'"):
        layer.init(jax.random.key(0), jnp.zeros((1, 5, 5, 1)))


@pytest.mark.parametrize("materialise_cotangent", [True, False])
def test_conv_patches_with_fewer_outputs_than_inputs_equals_lax_convolution(materialise_cotangent):
    """The shifted-products path (C_out < C_in, stride 1)."""
    from jax import lax

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 8, 6, 5)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 5, 1)), jnp.float32)
    for padding in ("SAME", "VALID", ((0, 2), (1, 0))):
        conv = lambda x, k: lax.conv_general_dilated(  # noqa: E731
            x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        ours = lambda x, k: modules.conv_patches(x, k, (1, 1), padding, materialise_cotangent)  # noqa: E731
        np.testing.assert_allclose(ours(x, k), conv(x, k), rtol=1e-5, atol=1e-5)
        grads = [jax.grad(lambda x, k: jnp.sum(f(x, k) ** 2), argnums=(0, 1))(x, k) for f in (conv, ours)]
        for g, w in zip(grads[1], grads[0], strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_matmul_materialised_cotangent_has_the_values_and_derivatives_of_a_matmul():
    """Leading axes, first and second derivatives (reverse over reverse), under vmap and inside a lax.switch."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    ours, plain = modules.matmul_materialised_cotangent, lambda x, w: x @ w  # noqa: E731
    np.testing.assert_allclose(ours(x, w), plain(x, w), rtol=1e-6)

    def loss(f):
        return lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * cotangent)

    for got, want in [
        (jax.grad(loss(ours), argnums=(0, 1))(x, w), jax.grad(loss(plain), argnums=(0, 1))(x, w)),
        (jax.vmap(ours, in_axes=(0, None))(x, w), jax.vmap(plain, in_axes=(0, None))(x, w)),
        (
            jax.vmap(jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2), argnums=(0, 1)), in_axes=(0, None))(x, w),
            jax.vmap(jax.grad(lambda x, w: jnp.sum(plain(x, w) ** 2), argnums=(0, 1)), in_axes=(0, None))(x, w),
        ),
        # d/dw of sum(dL/dx): the backward pass itself differentiated
        (
            jax.grad(lambda w: jnp.sum(jax.grad(loss(ours))(x, w) ** 2))(w),
            jax.grad(lambda w: jnp.sum(jax.grad(loss(plain))(x, w) ** 2))(w),
        ),
        (
            jax.jit(jax.grad(lambda w, i: jax.lax.switch(i, [loss(ours), loss(plain)], x, w)))(w, 0),
            jax.grad(loss(plain), argnums=1)(x, w),
        ),
    ]:
        for g, h in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5)
