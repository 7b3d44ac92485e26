"""Decoding only the present glimpses (``SQAIRConfig.decode_capacities``, ``SQAIR._decode_present``): the same
glimpses, canvases, log-weights and gradients as decoding every slot, whichever capacity branch runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax.models.sqair import SQAIR, SQAIRGenerative, conv_sqair_config
from tests.models.test_sqair_startup import B, K, _config, _force, _images


def test_capacities_are_rounded_fractions_and_the_whole():
    model = SQAIR(_config(decode_capacities=(0.25, 0.5, 0.75)))
    assert model.decode_capacities(960) == (240, 480, 720, 960)
    assert model.decode_capacities(18) == (8, 16, 18)  # rounded up to multiples of 8, capped at n
    assert SQAIR(_config(decode_capacities=())).decode_capacities(18) == (18,)


@pytest.mark.parametrize("bad", [(0.0,), (1.0,), (0.5, -0.1), (True,), ("half",)])
def test_bad_capacities_raise(bad):
    with pytest.raises(ValueError, match="decode_capacities must be a tuple of fractions in"):
        _config(decode_capacities=bad)


@pytest.mark.parametrize("num_present", [0, 5, 8, 9, 20, 31, 40])
def test_decode_present_equals_the_masked_full_decode(num_present):
    """Every branch (40 slots: capacities 16, 24, 32, 40), conv decoder, presence scattered over the slots."""
    config = conv_sqair_config(
        hidden=16,
        image_shape=(16, 16),
        glimpse_shape=(8, 8),
        z_what_dim=3,
        max_objects=4,
        decode_capacities=(0.25, 0.5, 0.75),
        decoder_channels=(4, 4, 4),
    )
    model = SQAIR(config)
    params = model.init(jax.random.key(0))
    z_what = jax.random.normal(jax.random.key(1), (2, 5, 4, 3))
    z_pres = np.zeros(40, np.float32)
    z_pres[np.random.default_rng(num_present).permutation(40)[:num_present]] = 1.0
    z_pres = z_pres.reshape(2, 5, 4)
    full = model._generative(params, SQAIRGenerative.decode, z_what)
    present = jax.jit(model._decode_present)(params, z_what, z_pres)
    assert present.shape == (2, 5, 4, 8, 8)
    np.testing.assert_allclose(present, full * z_pres[..., None, None], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def pair():
    """The same model with and without decode_capacities; most objects present, so that the branches differ."""
    on = SQAIR(_config(decode_capacities=(0.25, 0.5, 0.75)))
    off = SQAIR(dataclasses.replace(on.config, decode_capacities=()))
    params = _force(on.init(jax.random.key(0)), "inference", "disc_pres", 0.0)
    return on, off, params


def _log_weight_and_gradient(model, params):
    """(mean log-weight, inference outputs) and its gradient for the fixed images and key."""
    images, key = _images(), jax.random.key(3)

    def loss(p):
        out = model.infer(p, images, key, K)
        return jnp.mean(out.log_weight), out

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


@pytest.fixture(scope="module")
def every_slot_decoded(pair):
    """The reference: ``_log_weight_and_gradient`` of the model that decodes every slot."""
    on, off, params = pair
    return _log_weight_and_gradient(off, params)


def test_inference_log_weights_and_gradients_are_unchanged(pair, every_slot_decoded):
    on, off, params = pair
    (value_on, out_on), grad_on = _log_weight_and_gradient(on, params)
    (value_off, out_off), grad_off = every_slot_decoded
    present = float(out_on.z_pres.mean())
    assert 0.1 < present < 0.9, present  # a branch between none and all
    np.testing.assert_array_equal(out_on.z_pres, out_off.z_pres)
    np.testing.assert_allclose(out_on.canvas, out_off.canvas, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_on.log_likelihood, out_off.log_likelihood, rtol=1e-5)
    np.testing.assert_allclose(value_on, value_off, rtol=1e-6)
    decoder_on = grad_on["generative"]["glimpse_decoder"]
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(decoder_on)) > 0
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad_on, grad_off)


def test_inference_gradients_are_unchanged_without_rematerialising_the_decoder(pair, every_slot_decoded):
    """``decode_remat=False``; the default (True) is the test above."""
    on, off, params = pair
    assert on.config.decode_remat
    stored = SQAIR(dataclasses.replace(on.config, decode_remat=False))
    (value, _), grad = _log_weight_and_gradient(stored, params)
    (value_off, _), grad_off = every_slot_decoded
    np.testing.assert_allclose(value, value_off, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad, grad_off)


def test_generation_is_unchanged(pair):
    on, off, params = pair
    key = jax.random.key(5)
    a = on.generate(params, key, B, 3, noisy=True)
    b = off.generate(params, key, B, 3, noisy=True)
    assert float(a.z_pres.sum()) > 0
    np.testing.assert_allclose(a.frames, b.frames, rtol=1e-5, atol=1e-5)
    c = on.conditional_generate(params, _images()[:, :2], key, 2)
    d = off.conditional_generate(params, _images()[:, :2], key, 2)
    np.testing.assert_allclose(c.frames, d.frames, rtol=1e-5, atol=1e-5)
