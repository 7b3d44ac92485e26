"""Tests for ocr_jax.models.air: masking, presence log q, count prior, shared encoding, particle vmap, baselines,
generation, variants, bad inputs. Tiny sizes so everything compiles in seconds on CPU."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax import spatial_transformer as st
from ocr_jax.models import air
from ocr_jax.models.air import AIR, AIRConfig

N = 3
TINY = dict(
    canvas_shape=(12, 12),
    glimpse_shape=(4, 4),
    max_steps=N,
    z_what_dim=4,
    rnn_hidden=16,
    image_encoder="mlp",
    image_encoder_hidden=(16,),
    glimpse_encoder_hidden=(16,),
    glimpse_decoder_hidden=(16,),
    baseline_hidden=(8,),
)
# All unary codes of length N with their counts.
UNARY = np.array([[1.0] * n + [0.0] * (N - n) for n in range(N + 1)], np.float32)  # [N+1, N]


@functools.lru_cache(maxsize=None)
def _model(**overrides):
    cfg = AIRConfig(**{**TINY, **overrides})
    model = AIR(cfg)
    images = _images(2, cfg.canvas_shape)
    return model, jax.jit(model.init)(jax.random.key(0), images), images


def _images(b, hw=(12, 12)):
    return jnp.asarray(np.random.default_rng(0).random((b,) + tuple(hw)), jnp.float32)


@functools.lru_cache(maxsize=None)
def _infer_fn(num_particles, forced: bool, encode_per_step=False, **overrides):
    model, _, _ = _model(**overrides)

    def f(params, images, key, rho, forced_presence):
        return model.infer(
            params,
            images,
            key,
            num_particles=num_particles,
            continue_prob=rho,
            forced_presence=forced_presence if forced else None,
            encode_per_step=encode_per_step,
        )

    return jax.jit(f)


@functools.lru_cache(maxsize=None)
def _forced_fn():
    model, _, _ = _model()
    return jax.jit(
        lambda p, x, keys, rho, forced: model.infer_with_keys(p, x, keys, continue_prob=rho, forced_presence=forced)
    )


def _forced_all_patterns(model, params, images, rho=0.4):
    """K = N + 1 particles, all with the same key, whose presence is forced to the unary code of n = 0..N."""
    B = images.shape[0]
    forced = jnp.broadcast_to(UNARY, (B, N + 1, N))
    keys = jax.random.split(jax.random.key(3), (B, 1))[:, [0] * (N + 1)]
    return _forced_fn()(params, images, keys, rho, forced)


def test_count_prior_normalises_and_matches_closed_form():
    for rho in [0.01, 0.5, 0.9, 1.0 - 1e-6]:
        lp = np.asarray(air.count_log_prior(rho, N), np.float64)
        np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-5)
        expected = rho ** np.arange(N + 1) * (1 - rho) / (1 - rho ** (N + 1))
        np.testing.assert_allclose(np.exp(lp), expected, rtol=1e-3)
    # Per-step vector of continue probabilities: p(n) ∝ prod_{i<=n} rho_i.
    rhos = np.array([0.9, 0.3, 0.05])
    w = np.concatenate([[1.0], np.cumprod(rhos)])
    np.testing.assert_allclose(np.exp(air.count_log_prior(rhos, N)), w / w.sum(), rtol=1e-5)
    # Tiny probabilities (end of an annealing schedule) stay finite and normalised.
    lp = air.count_log_prior(1e-10, N)
    assert np.all(np.isfinite(lp)) and abs(float(jnp.exp(lp).sum()) - 1) < 1e-5


@pytest.mark.parametrize("rho", [0.3, np.array([0.9, 0.5, 0.2], np.float32)])
def test_per_step_presence_prior_sums_to_count_prior(rho):
    steps = air.presence_log_prior_steps(jnp.asarray(UNARY), rho, N)  # [N+1, N]
    np.testing.assert_allclose(steps.sum(-1), air.count_log_prior(rho, N), rtol=1e-5, atol=1e-6)
    # Steps after the stopping step contribute exactly zero.
    for n in range(N + 1):
        assert np.all(np.asarray(steps[n, n + 1 :]) == 0.0)


def test_absent_steps_contribute_exactly_zero():
    model, params, images = _model()
    out = _forced_all_patterns(model, params, images)
    z = np.asarray(out.z_pres)
    np.testing.assert_array_equal(z, np.broadcast_to(UNARY, z.shape))
    absent = z == 0
    for name in ["log_p_where", "log_p_what", "log_q_where", "log_q_what"]:
        v = np.asarray(getattr(out, name))
        assert np.all(v[absent] == 0.0), name
        assert np.all(v[~absent] != 0.0), name
    # Presence terms vanish after the stopping step (step n+1 is the stopping step and is non-zero).
    for n in range(N + 1):
        assert np.all(np.asarray(out.log_q_pres)[:, n, n + 1 :] == 0.0)
        assert np.all(np.asarray(out.log_p_pres)[:, n, n + 1 :] == 0.0)
    # Canvas = sum of the present steps' pasted glimpses only; n = 0 gives an exactly empty canvas.
    expected = jax.jit(lambda g, zw, zp: jnp.sum(st.paste_glimpse(g, zw, (12, 12)) * zp[..., None, None], axis=2))(
        out.glimpses, out.z_where, out.z_pres
    )  # [B, K, H, W]
    np.testing.assert_allclose(out.canvas, expected, atol=1e-6)
    assert np.all(np.asarray(out.canvas)[:, 0] == 0.0)
    np.testing.assert_allclose(
        out.log_likelihood[:, 0], model.log_likelihood(images, jnp.zeros_like(images)), rtol=1e-6
    )
    # Changing z_what/z_where at absent steps cannot change anything: the log weight does not depend on them.
    lw = out.log_weight
    np.testing.assert_allclose(lw, out.log_likelihood + jnp.sum(out.log_p_steps - out.log_q_steps, -1), rtol=1e-6)


def test_presence_log_q_closed_form_with_and_without_stopping_term():
    model, params, images = _model()
    out = _forced_all_patterns(model, params, images)
    logits = np.asarray(out.presence_logits, np.float64)  # [B, K, N]
    log_sig = lambda x: -np.logaddexp(0.0, -x)
    total = np.asarray(out.log_q_pres).sum(-1)
    for n in range(N + 1):
        expected = log_sig(logits[:, n, :n]).sum(-1)
        if n < N:  # the stopping step q(z_pres^{n+1} = 0)
            expected = expected + log_sig(-logits[:, n, n])
        np.testing.assert_allclose(total[:, n], expected, rtol=1e-5)
    # n = N: exactly the sum over the N present steps, no stopping factor.
    np.testing.assert_allclose(total[:, N], log_sig(logits[:, N]).sum(-1), rtol=1e-5)


def test_sampled_presence_is_unary_and_consistent():
    model, params, images = _model()
    out = _infer_fn(64, False)(params, images, jax.random.key(5), 0.5, None)
    z = np.asarray(out.z_pres)
    assert np.all(np.diff(z, axis=-1) <= 0)  # once 0, stays 0
    assert len(np.unique(z.sum(-1))) > 1  # p ≈ 0.8 at init: several counts appear
    np.testing.assert_array_equal(out.counts, z.sum(-1).astype(np.int32))
    np.testing.assert_allclose(
        out.log_p_pres.sum(-1), np.asarray(air.count_log_prior(0.5, N))[z.sum(-1).astype(int)], rtol=1e-5
    )


def test_image_encoding_once_equals_per_step_encoding():
    model, params, images = _model()
    key = jax.random.key(7)
    once = _infer_fn(2, False)(params, images, key, 0.5, None)
    per_step = _infer_fn(2, False, True)(params, images, key, 0.5, None)
    for a, b in zip(once, per_step):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_unrolled_step_scan_gives_the_same_values():
    _, params, images = _model()
    key = jax.random.key(3)
    looped = _infer_fn(2, False)(params, images, key, 0.5, None)
    unrolled = _infer_fn(2, False, scan_unroll=True)(params, images, key, 0.5, None)
    for name, a, b in zip(looped._fields, looped, unrolled):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_particle_vmap_equals_loop():
    model, params, images = _model()
    B, K = images.shape[0], 2
    keys = jax.random.split(jax.random.key(11), (B, K))
    f = jax.jit(lambda p, x, k: model.infer_with_keys(p, x, k, continue_prob=0.5))
    full = f(params, images, keys)
    for b, k in itertools.product(range(B), range(K)):
        single = f(params, images[b : b + 1], keys[b : b + 1, k : k + 1])
        for name, a, s in zip(full._fields, full, single):
            if name == "baseline_image_features":
                np.testing.assert_allclose(a[b], s[0], rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_allclose(a[b, k], s[0, 0], rtol=1e-5, atol=1e-5, err_msg=name)
    # infer() uses jax.random.split(key, (B, K)).
    via_infer = _infer_fn(K, False)(params, images, jax.random.key(11), 0.5, None)
    np.testing.assert_allclose(via_infer.log_weight, full.log_weight, rtol=1e-6)


def test_baseline_features_do_not_depend_on_current_presence():
    model, params, images = _model()
    out = _forced_all_patterns(model, params, images)
    feats = np.asarray(out.baseline_step_features)
    base = np.asarray(model.baseline_values(params, out))
    # Patterns n and n+1 differ first at step n (0-based): features/baselines of steps 0..n must agree.
    for n in range(N):
        np.testing.assert_array_equal(feats[:, n, : n + 1], feats[:, n + 1, : n + 1])
        np.testing.assert_allclose(base[:, n, : n + 1], base[:, n + 1, : n + 1], rtol=1e-6)
    # ...and they do depend on earlier presence (step n+1 sees z_pres^n).
    assert not np.allclose(feats[:, 0, 1], feats[:, 1, 1])


def test_pyro_style_recurrent_baseline_is_causal_sees_the_image_and_not_the_controller():
    model, params, images = _model()
    out = _forced_all_patterns(model, params, images)
    rnn_model, rnn_params, _ = _model(baseline_rnn_hidden=8)  # the same inference network; an LSTM baseline
    assert "rnn" in rnn_params["baseline"]["params"]

    def baseline(p, o):
        return np.asarray(rnn_model.baseline_values(p, o))

    base = baseline(rnn_params, out)
    assert base.shape == (images.shape[0], N + 1, N) and np.all(np.isfinite(base))
    for n in range(N):  # step i sees z^{<i} only (see the test above)
        np.testing.assert_allclose(base[:, n, : n + 1], base[:, n + 1, : n + 1], rtol=1e-6)
    assert not np.allclose(base[:, 0, 1], base[:, 1, 1])
    # The controller's h_i is not an input (the LSTM has its own recurrence); the image is.
    feats = out.baseline_step_features
    no_h = out._replace(baseline_step_features=feats.at[..., : TINY["rnn_hidden"]].set(0.0))
    np.testing.assert_array_equal(baseline(rnn_params, no_h), base)
    other_x = out._replace(baseline_image_features=out.baseline_image_features[::-1])
    assert not np.allclose(baseline(rnn_params, other_x), base)
    grads = jax.grad(lambda p: jnp.sum(rnn_model.baseline_values(p, out)))(rnn_params)
    lstm = jax.tree.leaves(grads["baseline"]["params"]["rnn"])
    assert len(lstm) >= 3 and all(float(jnp.abs(g).sum()) > 0 for g in lstm)


def test_downstream_learning_signal_covers_every_downstream_term():
    model, params, images = _model()
    out = _infer_fn(2, False)(params, images, jax.random.key(2), 0.5, None)
    sig = np.asarray(air.downstream_learning_signal(out))
    terms = np.asarray(out.log_p_steps - out.log_q_steps)
    ll = np.asarray(out.log_likelihood)
    for i in range(N):
        np.testing.assert_allclose(sig[..., i], ll + terms[..., i:].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(sig[..., 0], out.log_weight, rtol=1e-5)


def test_gradients_reach_every_parameter_group():
    model, params, images = _model()

    def loss(p):
        out = model.infer(p, images, jax.random.key(1), num_particles=2, continue_prob=0.5)
        b = model.baseline_values(p, out)
        sig = jax.lax.stop_gradient(air.downstream_learning_signal(out))
        # ELBO (reparameterised part) + score-function surrogate + baseline regression.
        surrogate = jnp.sum(jax.lax.stop_gradient(sig - b) * out.log_q_pres)
        return -jnp.mean(out.log_weight) - surrogate + jnp.mean(jnp.square(sig - b))

    grads = jax.jit(jax.grad(loss))(params)
    for group in ["generative", "inference", "baseline"]:
        leaves = jax.tree.leaves(grads[group])
        assert all(np.all(np.isfinite(g)) for g in leaves), group
        assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0, group
    # The presence head gets gradient only through the score-function term, and it does.
    assert float(jnp.abs(grads["inference"]["params"]["presence"]["bias"]).sum()) > 0


def test_initialisation_matches_config():
    model, params, images = _model()
    cfg = model.config
    out = _infer_fn(2, False)(params, images, jax.random.key(2), 0.5, None)
    # Small head kernels: presence probability near init_presence_prob, where-mean near init_scale.
    np.testing.assert_allclose(jax.nn.sigmoid(out.presence_logits), cfg.init_presence_prob, atol=0.1)
    np.testing.assert_allclose(params["inference"]["params"]["presence"]["bias"], air.modules.logit(0.8), rtol=1e-6)
    np.testing.assert_allclose(
        air.where_transform(params["inference"]["params"]["where"]["loc"]["bias"], cfg)[0], cfg.init_scale, rtol=1e-5
    )
    assert abs(float(jnp.mean(out.z_where[..., 0])) - cfg.init_scale) < 0.1
    # Canvas starts dim: decoder output bias -2 -> glimpse intensities around sigmoid(-2) = 0.12.
    assert float(jnp.mean(out.glimpses)) < 0.3


def test_generate_counts_follow_truncated_geometric():
    model, params, _ = _model()
    rho = 0.6
    s = jax.jit(lambda p, k: model.generate(p, k, 4000, continue_prob=rho))(params, jax.random.key(9))
    freq = np.bincount(np.asarray(s.counts), minlength=N + 1) / 4000
    p = np.exp(np.asarray(air.count_log_prior(rho, N)))
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(p * (1 - p) / 4000).max())
    np.testing.assert_array_equal(s.z_pres.sum(-1), s.counts)
    empty = np.asarray(s.counts) == 0
    assert np.all(np.asarray(s.canvas)[empty] == 0.0)
    assert s.images.shape == (4000, 12, 12)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(
            rnn="gru",
            glimpse_encoder="conv",
            glimpse_decoder="conv",
            encoder_conv_channels=(4,),
            decoder_conv_channels=(4, 4),
            z_where_dim=4,
            likelihood="bernoulli",
            controller_hidden=(8,),
        ),
        dict(rnn="vanilla", image_encoder="raw", where_parametrisation="pyro"),
    ],
)
def test_variants_run_and_are_finite(overrides):
    overrides_key = tuple(sorted(overrides.items()))
    model, params, images = _model(**dict(overrides_key))
    out = _infer_fn(2, False, **dict(overrides_key))(params, images, jax.random.key(0), 0.5, None)
    for name, v in zip(out._fields, out):
        assert np.all(np.isfinite(v)), name
    assert out.z_where.shape[-1] == model.config.z_where_dim
    boxes = out.boxes(model.config.canvas_shape)
    assert np.all(np.asarray(boxes)[np.asarray(out.z_pres) == 0] == 0.0)


def test_conv_modules_and_subpixel_shuffle():
    from ocr_jax.models import modules

    # depth_to_space: channel (i, j, c) of input pixel (y, x) goes to output pixel (2y + i, 2x + j), channel c.
    x = jnp.arange(2 * 3 * 8, dtype=jnp.float32).reshape(2, 3, 8)  # [h, w, c * 4] with c = 2
    y = np.asarray(modules.depth_to_space(x, 2))
    assert y.shape == (4, 6, 2)
    xr = np.asarray(x).reshape(2, 3, 2, 2, 2)
    for yy, xx, i, j, c in itertools.product(range(2), range(3), range(2), range(2), range(2)):
        assert y[2 * yy + i, 2 * xx + j, c] == xr[yy, xx, i, j, c]
    key = jax.random.key(0)
    enc = modules.ImageEncoder("conv", (8,), (4,))
    v = enc.init(key, jnp.zeros((3, 12, 12)))
    assert enc.apply(v, jnp.zeros((3, 12, 12))).shape == (3, 8)
    dec = modules.GlimpseDecoder((8, 8), "conv", (8,), (4, 4), -3.0)
    v = dec.init(key, jnp.zeros((2, 5, 4)))
    out = dec.apply(v, jnp.zeros((2, 5, 4)))
    assert out.shape == (2, 5, 8, 8)
    np.testing.assert_allclose(out, -3.0, atol=1e-6)  # zero input, ReLU stack of zero-bias convs -> output bias
    for kind in modules.RNN_KINDS:
        cell = modules.make_rnn_cell(kind, 6)
        carry = modules.rnn_zero_state(kind, 6, (2,))
        v = cell.init(key, carry, jnp.zeros((2, 3)))
        new_carry, h = cell.apply(v, carry, jnp.ones((2, 3)))
        np.testing.assert_allclose(modules.rnn_output(kind, new_carry), h)


def test_where_transform_roundtrip_and_pyro_convention():
    for cfg in [
        AIRConfig(**TINY),
        AIRConfig(**{**TINY, "z_where_dim": 4}),
        AIRConfig(**{**TINY, "where_parametrisation": "pyro"}),
    ]:
        raw = jnp.asarray(np.random.default_rng(0).normal(size=(5, cfg.z_where_dim)), jnp.float32)
        if cfg.where_parametrisation == "pyro":
            raw = raw.at[:, 0].set(3.0 + 0.2 * raw[:, 0])
        np.testing.assert_allclose(
            air.where_inverse_transform(air.where_transform(raw, cfg), cfg), raw, rtol=1e-4, atol=1e-4
        )
    # Pyro: z = (s, x, y) maps glimpse->canvas as p -> s p + (x, y) when pasting, i.e. ST scale 1/s, shift -x/s.
    cfg = AIRConfig(**{**TINY, "where_parametrisation": "pyro"})
    np.testing.assert_allclose(air.where_transform(jnp.array([2.0, 0.5, -1.0]), cfg), [0.5, -0.25, 0.5])


def test_continue_prob_schedule():
    f = functools.partial(air.continue_prob_schedule, start=0.99, end=1e-5, duration=100)
    np.testing.assert_allclose(f(0), 0.99, rtol=1e-6)
    np.testing.assert_allclose(f(100), 1e-5, rtol=1e-4)
    np.testing.assert_allclose(f(1000), 1e-5, rtol=1e-4)
    np.testing.assert_allclose(f(50), np.sqrt(0.99 * 1e-5), rtol=1e-4)
    np.testing.assert_allclose(f(50, kind="linear"), (0.99 + 1e-5) / 2, rtol=1e-5)
    assert float(jax.jit(f)(jnp.asarray(50))) == pytest.approx(float(f(50)))


def test_bad_inputs_raise_clear_errors():
    model, params, images = _model()
    ok = np.random.default_rng(0).random((2, 12, 12)).astype(np.float32)
    air.validate_images(ok, (12, 12))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        air.validate_images(ok * 2, (12, 12))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        air.validate_images(ok - 0.5, (12, 12))
    bad = ok.copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        air.validate_images(bad, (12, 12))
    with pytest.raises(ValueError, match="canvas size"):
        air.validate_images(np.zeros((2, 10, 12), np.float32), (12, 12))
    with pytest.raises(ValueError, match="batch, height, width"):
        air.validate_images(np.zeros((12, 12), np.float32), (12, 12))
    with pytest.raises(ValueError, match="floating"):
        air.validate_images(np.zeros((2, 12, 12), np.uint8), (12, 12))
    with pytest.raises(ValueError, match="shape"):
        model.infer(params, jnp.zeros((2, 10, 10)), jax.random.key(0))
    with pytest.raises(ValueError, match="z_where_dim"):
        AIRConfig(z_where_dim=5)
    with pytest.raises(ValueError, match="rnn"):
        AIRConfig(rnn="transformer")
    with pytest.raises(ValueError, match="divisible"):
        AIR(AIRConfig(**{**TINY, "glimpse_shape": (5, 5), "glimpse_decoder": "conv"})).init(jax.random.key(0), images)
