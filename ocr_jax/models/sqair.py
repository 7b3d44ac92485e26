"""SQAIR: Sequential Attend, Infer, Repeat (Kosiorek et al., 2018; thesis chapter 5).

As AIR (``ocr_jax.models.air``), one Linen module per parameter group: :class:`SQAIRGenerative` (θ: glimpse decoder,
propagation prior, discovery-count table) and :class:`SQAIRInference` (φ: encoders, PROP's and DISC's networks), each
with its submodules defined in ``setup``, one method per use and one ``init`` (``__call__`` runs every method once,
so input widths follow from the data flow), built from the shared blocks of ``ocr_jax.models.modules`` (MLP, Gaussian
and logit heads). :class:`SQAIR` wires them together with ``jax.lax.scan`` over time and over objects, with fixed
shapes and presence masks. Parameters live in two top-level groups, ``{"generative": ..., "inference": ...}``, each
the module's ``"params"`` collection, so an objective can treat θ and φ differently. Outputs are typed
(:class:`SQAIROutput`, :class:`SQAIRSample`), and are Mappings as well (``out["z_pres"]``).

Parameter layout: every path and shape is that of the first implementation (string-keyed networks initialised one by
one), so checkpoints written before the modules moved onto the shared blocks load and compute the same function, bit
for bit (``tests/models/test_parameter_layout.py``); the shared blocks take ``layer_name="Dense"`` and, for the Gaussian
heads, ``joint=True`` for that. Fresh parameters differ from the first implementation's only in the kernels' random
draws: each group is now initialised from one key, split by Linen per submodule, instead of one key per network.

Slots. Every particle keeps ``N = max_objects`` object slots per frame. After each frame's PROP the surviving
propagated objects are moved (stably) to the front; DISC writes the objects it discovers into the next free slots,
so at every time step the present objects occupy slots ``0 .. P_t + D_t - 1`` in identity order. Each slot carries
an integer identity (``-1`` when absent); a propagated object keeps its identity, a discovered one gets a fresh one.

DISC runs ``N`` recurrent steps; step ``i`` is *allowed* only while ``i < N - P_t`` and all earlier steps were
present (AIR's stopping rule), so at most ``N - P_t`` objects are discovered and the presence path's log q has no
stopping term once all allowed steps are present.

Log-densities (per particle, per time step; thesis Eq. 5.3-5.4): ``log_likelihood`` = log p(x_t | z_t),
``log_p_disc`` = log p^D(D_t, z_t^D | P_t), ``log_p_prop`` = log p^P(z_t^P | z_{t-1}), ``log_q_disc``,
``log_q_prop``; their sum over time is one particle's log importance weight. ``log_q_pres`` is the part of
``log_q_disc + log_q_prop`` that comes from the (discrete) presence variables — the score-function term for VIMCO.

Choices the thesis leaves open, and how they are made here:
- z_where is 4-D: a Gaussian latent ``z_where_raw`` in an unconstrained space, mapped to the spatial transformer's
  ``z_where = (s_x, s_y, t_x, t_y)`` by ``s = s_min + (s_max - s_min) sigmoid(raw_s)`` (``s_max =
  max_glimpse_scale``, 1 in the official code) and, with
  ``where_map="sigmoid_tanh"`` (the official code, ``modules.py:220-227``), ``t = tanh(raw_t)``, so a glimpse's centre
  never leaves the canvas; ``shift_bound = b > 1`` makes it ``t = b·tanh(raw_t / b)`` (the same near the centre; not
  AIR's ``shift_range·tanh``), so that a glimpse can follow its digit off the canvas (``"sigmoid_linear"``: ``t =
  raw_t``, the first implementation). All densities are over the
  unconstrained values. The outputs name them as AIR's do: ``z_where`` the transform, ``z_where_raw`` the latent.
- The propagation prior's and posterior's z_where means are residual: ``z_where_{t-1} + f(...)``; the posterior's
  update and PROP's proposal are scaled by ``prop_update_scale`` (0.1 in the official code, ``core.py:291, 322``),
  so PROP starts as "stay put". With ``prop_velocity`` all three start from the position extrapolated by the object's
  last shift displacement instead (``z_where_{t-1} + v_{t-1}``, carried in the state as ``where_velocity``).

Start-up (what decides whether training finds every object; each option is a config field, tested):
- every posterior standard deviation is ``softplus(raw + bias) + std_floor`` (1e-2 as the official code);
- DISC starts like the AIR that learns to count: head kernels scaled by ``disc_head_kernel_scale`` (the biases
  dominate), presence probability ``sigmoid(disc_presence_logit_init)`` (0.8), glimpse scale ``disc_init_scale``;
- DISC's presence is predicted after z_where and z_what, from ``[h, z_what]`` (``presence_after_what``;
  the official ``core.py:200-208``);
- PROP's z_what posterior is ``"gated"`` (official ``core.py:343-354``): mean ``f·z_what_{t-1} + (1 - i)·μ_g +
  (1 - u)·μ_T`` and scale ``(1 - i)·σ_g + (1 - u)·σ_T`` with gates ``f, i, u = 0.9999·sigmoid(·)`` whose bias is
  +1 (so the mean starts ≈ 0.73·z_what_{t-1} + 0.27·new evidence), ``(μ_g, σ_g)`` DISC's glimpse head (shared) on
  the new glimpse and ``(μ_T, σ_T)`` a head on the temporal RNN's output (as in the official code, this scale is a
  gate-weighted sum of floored scales and can fall below ``std_floor`` when the gates saturate); ``"direct"`` is one
  head on everything;
- ``disc_later_presence_bias`` is added to DISC's presence logit in frames t > 1; ``-inf`` closes discovery after
  frame 1 exactly (DISC's objects are then masked out, as those beyond N − P_t are).
- A discovered object's temporal state is the temporal GRU applied to a learned initial state with input
  ``[glimpse encoding, z_where, DISC-RNN output]`` (the DISC analogue of Eq. 5.15).
- The discovery prior ``p_θ(D_t | P_t)`` is a learned table of logits indexed by (first frame?, P_t), masked to
  ``{0..N - P_t}``; the no-new-objects logit of frames t > 1 starts at +10, as does the propagation prior's keep logit
  (the official code's initialisation).
- Fresh identities come from a per-particle counter (the largest identity ever used + 1). Alg. 3 says "largest
  propagated identity + 1", which can re-use the identity of an object that was just forgotten; the counter never does
  and agrees with Alg. 3 whenever the object with the largest identity survives.
- Continuous latents of an object that is forgotten (PROP) or not discovered contribute to neither p nor q (an
  auxiliary-variable extension whose p-side density equals q, which keeps the bound exact).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocr_jax import validation
from ocr_jax.distributions import diag_normal_log_prob, truncated_categorical
from ocr_jax.models import modules
from ocr_jax.spatial_transformer import composite_glimpses, extract_glimpse, paste_glimpse

__all__ = [
    "SQAIRConfig",
    "SQAIR",
    "SQAIRGenerative",
    "SQAIRInference",
    "SQAIRSteps",
    "SQAIROutput",
    "SQAIRSample",
    "SQAIRConditionalSample",
    "mlp_sqair_config",
    "conv_sqair_config",
    "where_to_transform",
]

Params = Mapping[str, Any]
_MIN_SCALE = 1e-2  # smallest glimpse scale; keeps the inverse transform finite


# ----------------------------------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class SQAIRConfig:
    """Hyper-parameters of SQAIR (§5.D.2). ``arch`` is ``"mlp"`` (MLP-SQAIR) or ``"conv"`` (CONV-SQAIR)."""

    image_shape: tuple[int, int] = (50, 50)
    glimpse_shape: tuple[int, int] = (20, 20)
    max_objects: int = 3
    z_what_dim: int = 50
    hidden: int = 256
    arch: str = "mlp"
    max_seq_len: int = 10
    obs_std: float = 0.3
    # Discovery prior over the unconstrained z_where_raw = (scale logits y/x, shifts y/x); the official code's
    # scale_prior = -2 (glimpse scale sigmoid(-2) = 0.12 of the canvas) favours small glimpses, which keeps one
    # object from covering two digits.
    where_prior_loc: tuple[float, float, float, float] = (-2.0, -2.0, 0.0, 0.0)
    where_prior_scale: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    # Posterior z_where standard deviations start at softplus(where_posterior_scale_bias) (the official code's
    # transform_var_bias = -3: 0.049), not ~1, which would scatter glimpses over half the canvas at initialisation.
    where_posterior_scale_bias: float = -3.0
    keep_logit_init: float = 10.0
    no_new_objects_logit_init: float = 10.0
    # Initial biases of the posterior presence logits, as the official code's prop_step_bias = 5 ("added to the
    # logit of propagating an existing object") and disc_step_bias = 1: at initialisation PROP keeps every object
    # (probability 0.993) instead of dropping half of them, which otherwise teaches DISC to re-discover every
    # object in every frame (the DISC-only failure mode, §5.G; measured in docs/results.md).
    prop_presence_logit_init: float = 5.0
    # DISC starts with presence probability sigmoid(1.386) = 0.8, as the AIR that learns to count.
    disc_presence_logit_init: float = 1.386
    # Start-up (module docstring); the first implementation's values were "sigmoid_linear", 1e-4, 1.0, None,
    # False, 1.0 and "direct".
    where_map: str = "sigmoid_tanh"
    # Under "sigmoid_tanh" the shift is b·tanh(raw_t / b) with b = shift_bound (the identity near 0 for every b).
    # 1 is the official map: a glimpse's centre stays on the canvas, so an object whose digit leaves the frame wholly
    # is held at the edge. b > 1 (e.g. 2: the centre up to one half-canvas beyond the edge) lets a glimpse follow its
    # digit off the canvas; an object there draws nothing, and the visible count reads it as out of view
    # (ocr_jax.evaluation.sqair.visible_objects).
    shift_bound: float = 1.0
    # The largest glimpse scale s_max (fraction of the canvas side): s = s_min + (s_max − s_min)·sigmoid(raw_s). 1 is
    # the official map. Below 1 it bounds the window, e.g. 0.5 (25 px of 50, a 20-px tight-cropped digit with a
    # margin): a window that large holds two digits only where they overlap or are both narrow, so DISC cannot settle
    # on one object that paints two digits (AIR's merged-object mode; measured in docs/results.md, issue #13).
    max_glimpse_scale: float = 1.0
    std_floor: float = 1e-2
    disc_head_kernel_scale: float = 0.1
    # Initial DISC glimpse scale (fraction of the canvas side): 0.4 = 20 px of 50, a tight-cropped MNIST digit.
    # None leaves the scale logit's bias at 0 (scale ≈ 0.5).
    disc_init_scale: float | None = 0.4
    presence_after_what: bool = True
    prop_update_scale: float = 0.1
    # True: PROP's proposal, its where posterior mean and the propagation prior's where mean start from the object's
    # position extrapolated by its last displacement, z_where_{t-1} + (z_where_{t-1} − z_where_{t-2}) in the shift
    # coordinates (scales are not extrapolated; a new object's displacement is 0). The data's digits keep their
    # velocity (SQAIR.md "Data"); without it a proposal starts where the object was, and where two digits cross each
    # track takes the nearer digit after the crossing: the tracks bounce and exchange identities (docs/results.md).
    # False: the official code's z_where_{t-1}.
    prop_velocity: bool = False
    prop_what: str = "gated"
    # Added to DISC's posterior presence logit after the first frame (a fixed offset of q, like the prior's
    # no-new-objects logit): negative values make re-detecting an object that PROP holds unlikely at the start.
    disc_later_presence_bias: float = 0.0
    # > 0: DISC's presence logit is bounded softly to (−b, b) as b·tanh(logit / b), so that every particle keeps a
    # probability ≥ sigmoid(−b) of leaving out any object. Without it DISC's presence saturates (log q of the presence
    # path ≈ −2e-5 measured in docs/results.md) and the score-function signal, which compares particles, vanishes:
    # an object that explains nothing is then kept for ever, whatever it costs. 0: unbounded (the official code).
    disc_presence_logit_bound: float = 0.0
    # > 0: the same soft bound on PROP's presence logit, so that every particle drops a tracked object with a
    # probability ≥ sigmoid(−b) per frame. Without it PROP's presence saturates too (its prior and posterior keep
    # logits ≈ 10), no particle ever loses an object in training, and DISC never learns to find one again after frame
    # 1: a digit whose track is lost at test time (e.g. taken over where two digits cross) stays lost (measured in
    # docs/results.md). 0: unbounded (the official code).
    prop_presence_logit_bound: float = 0.0
    # Where disc_presence_logit_bound acts: "all" frames, or the "first" frame only — where the spare object of a
    # one-digit sequence comes from; in every frame the bound adds objects where nothing is new (docs/results.md).
    disc_presence_bound_frames: str = "all"
    # 0: the discovery-count prior of frame 1 is the learned table (the official code). A value ρ in (0, 1): the
    # fixed truncated geometric p(D_1 = n) ∝ ρ^n, AIR's count prior (log ρ nats per object), which keeps DISC from
    # explaining one digit with several small glimpses (measured in docs/results.md).
    first_frame_continue_prob: float = 0.0
    # Unroll the inference scans over objects and time (same values). XLA's cost analysis counts a scan body once,
    # so FLOPs per step are counted on an unrolled copy (benchmarks/sqair_step.py).
    scan_unroll: bool = False
    # Decode only the present glimpses when a batch is rendered (the same values): the T·N glimpses of every particle
    # and sequence are sorted present-first and the decoder runs on the smallest of these fractions of them that
    # holds every present one (all of them when none does), through a ``lax.switch`` over one compiled branch per
    # fraction. An absent object's glimpse is multiplied by z_pres = 0, so nothing it would draw reaches the canvas or
    # the gradient. () decodes every slot. Applied where a whole batch is rendered at once (``infer``,
    # ``generate``), not under a caller's own ``vmap`` of those (a batched switch index would run every branch).
    decode_capacities: tuple[float, ...] = (0.25, 0.375, 0.5, 0.75)
    # Recompute the switch's decoder forward pass (the slots beyond the smallest capacity) in the backward pass
    # instead of keeping its activations (the same values): differentiating a ``lax.switch`` makes every branch
    # return the residuals of all branches, the others' as zeros, so keeping them writes several times the chosen
    # branch's activations as zeros at every step (measured: benchmarks/sqair_decode.py). No effect when
    # decode_capacities is ().
    decode_remat: bool = True
    # Initial bias of the glimpse decoder's output logits. 0 (sigmoid 0.5) makes every new object paint a grey
    # square, a large likelihood penalty that teaches the model to switch objects off before it learns to draw;
    # a negative bias (AIR's decoder_output_bias, e.g. -2: sigmoid 0.12) starts objects nearly transparent.
    decoder_output_bias: float = 0.0
    conv_channels: tuple[int, ...] = (16, 32, 32, 64)
    conv_strides: tuple[int, ...] = (2, 2, 1, 1)
    decoder_channels: tuple[int, ...] = (32, 64, 64)
    decoder_strides: tuple[int, ...] = (1, 2, 2)
    # How CONV-SQAIR's convolutions are computed (the same values): "xla" (XLA's convolution), "patches" (matrix
    # products over image patches, ``modules.conv_patches``: XLA:CPU runs a convolution inside a scan or cond body on a
    # slow path, dots at full speed; on this CPU the whole step was also faster with patches where the scans are
    # unrolled: docs/results.md) or "auto" (patches on the CPU backend, XLA's convolution elsewhere).
    conv_implementation: str = "auto"

    def __post_init__(self):
        """Every field with a valid range is checked here; all violations are reported in one ValueError."""
        check = validation.ConfigCheck(self)
        check.one_of("arch", ("mlp", "conv"))
        check.one_of("where_map", WHERE_MAPS)
        check.one_of("prop_what", ("gated", "direct"))
        check.one_of("disc_presence_bound_frames", ("all", "first"))
        check.one_of("conv_implementation", ("auto", "patches", "xla"))
        check.ints_at_least(1, "image_shape", "glimpse_shape", length=2)
        check.glimpse_fits("glimpse_shape", "image_shape")
        check.int_at_least(1, "max_objects", "z_what_dim", "hidden", "max_seq_len")
        # std_floor > 0 (not only >= 0): every posterior scale is softplus(.) + std_floor, and softplus underflows to
        # 0 for very negative inputs, so a zero floor allows log(0) in the densities.
        check.positive("obs_std", "std_floor", "shift_bound")
        check.number_tuple("where_prior_loc", length=4)
        check.number_tuple("where_prior_scale", length=4, positive=True)
        check.finite(
            "where_posterior_scale_bias",
            "keep_logit_init",
            "no_new_objects_logit_init",
            "prop_presence_logit_init",
            "disc_presence_logit_init",
            "decoder_output_bias",
        )
        later_error = later_bias_error(self.disc_later_presence_bias, "disc_later_presence_bias")
        check.require(later_error is None, later_error)
        check.non_negative(
            "disc_head_kernel_scale", "prop_update_scale", "disc_presence_logit_bound", "prop_presence_logit_bound"
        )
        check.number(
            "first_frame_continue_prob", lambda v: 0.0 <= v < 1.0, "in [0, 1) (0: the learned discovery-count table)"
        )
        check.number(
            "max_glimpse_scale", lambda v: _MIN_SCALE < v <= 1.0, f"in ({_MIN_SCALE}, 1] (1: the official map)"
        )
        if self.disc_init_scale is not None:
            s_max = self.max_glimpse_scale
            check.number(
                "disc_init_scale",
                lambda v: _MIN_SCALE < v < s_max,
                f"in ({_MIN_SCALE}, max_glimpse_scale = {s_max}) or None",
            )
        check.require(
            isinstance(self.presence_after_what, bool),
            f"presence_after_what must be a bool; got {self.presence_after_what!r}",
        )
        check.require(isinstance(self.scan_unroll, bool), f"scan_unroll must be a bool; got {self.scan_unroll!r}")
        check.require(
            isinstance(self.decode_capacities, tuple)
            and all(
                isinstance(f, float | int) and not isinstance(f, bool) and 0 < f < 1 for f in self.decode_capacities
            ),
            f"decode_capacities must be a tuple of fractions in (0, 1); got {self.decode_capacities!r}",
        )
        check.ints_at_least(1, "conv_channels", "conv_strides", "decoder_channels", "decoder_strides")
        check.require(
            len(self.conv_channels) == len(self.conv_strides),
            f"conv_channels and conv_strides must have the same length; got {self.conv_channels} and "
            f"{self.conv_strides}",
        )
        check.require(
            len(self.decoder_channels) == len(self.decoder_strides),
            f"decoder_channels and decoder_strides must have the same length; got {self.decoder_channels} "
            f"and {self.decoder_strides}",
        )
        if self.arch == "conv" and not check.errors:
            up = int(np.prod(self.decoder_strides))
            check.require(
                all(g % up == 0 for g in self.glimpse_shape),
                f"the conv decoder needs glimpse sides divisible by {up}; got {self.glimpse_shape}",
            )
        check.done()


def mlp_sqair_config(hidden: int = 256, **overrides) -> SQAIRConfig:
    """MLP-SQAIR (§5.D.2): fully-connected networks, 256 units; ``hidden=32`` is the CPU-budget variant."""
    return SQAIRConfig(arch="mlp", hidden=hidden, **overrides)


def conv_sqair_config(hidden: int = 128, **overrides) -> SQAIRConfig:
    """CONV-SQAIR (§5.D.2): shared CNN encoder trunk, subpixel-CNN glimpse decoder, 128 units."""
    return SQAIRConfig(arch="conv", hidden=hidden, **overrides)


WHERE_MAPS = ("sigmoid_tanh", "sigmoid_linear")


def where_to_transform(
    z_where_raw: jax.Array, where_map: str = "sigmoid_tanh", shift_bound: float = 1.0, max_scale: float = 1.0
) -> jax.Array:
    """The unconstrained Gaussian latent ``z_where_raw [..., 4]`` -> the spatial-transformer ``z_where`` ``(s_x, s_y,
    t_x, t_y) [..., 4]``: ``s = s_min + (s_max - s_min) sigmoid(raw_s)`` with ``s_max = max_scale`` (1 the official
    map); ``t = b·tanh(raw_t / b)`` with ``b = shift_bound`` (``"sigmoid_tanh"``; b = 1 the official ``tanh(raw_t)``)
    or ``raw_t`` (``"sigmoid_linear"``)."""
    if where_map not in WHERE_MAPS:
        raise ValueError(f"where_map must be one of {WHERE_MAPS}; got {where_map!r}")
    if not shift_bound > 0:
        raise ValueError(f"shift_bound must be positive; got {shift_bound!r}")
    if not _MIN_SCALE < max_scale <= 1.0:
        raise ValueError(f"max_scale must be in ({_MIN_SCALE}, 1]; got {max_scale!r}")
    scale = _MIN_SCALE + (max_scale - _MIN_SCALE) * jax.nn.sigmoid(z_where_raw[..., :2])
    raw_shift = z_where_raw[..., 2:]
    # b = 1: the official tanh bit for bit (dividing and multiplying by 1 are exact)
    shift = raw_shift if where_map == "sigmoid_linear" else shift_bound * jnp.tanh(raw_shift / shift_bound)
    return jnp.concatenate([scale, shift], axis=-1)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# ----------------------------------------------------------------------------------------------------------------------
# Densities


def later_bias_error(value, name: str) -> str | None:
    """Why ``value`` cannot be DISC's presence-logit offset after frame 1 (a number, finite or −inf: discovery
    closed), or None if it can. ``value`` a Python number or a concrete scalar array."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.ndarray, np.generic, jax.Array)):
        return f"{name} must be a finite number or -inf (no discovery after frame 1); got {value!r}"
    v = float(np.asarray(value))
    if math.isnan(v) or v == math.inf:
        return f"{name} must be a finite number or -inf (no discovery after frame 1); got {v}"
    return None


def bound_logit(logit, bound: float):
    """``bound · tanh(logit / bound)``: a logit bounded softly to (−bound, bound), the identity near 0; unchanged
    for ``bound = 0``."""
    return logit if not bound else bound * jnp.tanh(logit / bound)


def _sample_bernoulli(key, logit):
    return (jax.random.uniform(key, jnp.shape(logit)) < jax.nn.sigmoid(logit)).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Networks (pure Linen): one module per parameter group, SQAIRGenerative (θ) and SQAIRInference (φ), built from the
# shared blocks of ocr_jax.models.modules. Their submodules keep the names (and the parameter layout inside them) of
# the first implementation, so SQAIR's existing checkpoints load unchanged: ELU networks whose layers carry Linen's
# automatic names ("Dense_i", layer_name="Dense") and Gaussian heads with one joint output layer (joint=True).


def _mlp(features, activate_final=False) -> modules.MLP:
    return modules.MLP(tuple(features), nn.elu, activate_final, layer_name="Dense")


def _gaussian_head(c: SQAIRConfig, dim: int, scale_bias: float = 0.5, **kw) -> modules.GaussianHead:
    """A 2-layer ELU MLP -> (loc, scale) of ``dim`` variables, ``scale = softplus(raw + scale_bias) + std_floor``."""
    scale_init = float(np.logaddexp(0.0, scale_bias)) + c.std_floor  # softplus(scale_bias) + floor
    return modules.GaussianHead(
        dim,
        scale_init=scale_init,
        min_scale=c.std_floor,
        hidden=(c.hidden,),
        activation=nn.elu,
        joint=True,
        layer_name="Dense",
        **kw,
    )


def _logit_head(c: SQAIRConfig, bias_init: float, kernel_scale: float = 1.0) -> modules.LogitHead:
    """A 2-layer ELU MLP -> a Bernoulli logit whose bias starts at ``bias_init``."""
    return modules.LogitHead((c.hidden,), bias_init, kernel_scale, nn.elu, layer_name="Dense")


class WhatGates(nn.Module):
    """PROP's z_what gates ``(f, i, u) = 0.9999·sigmoid(Dense(h) + 1)``, each ``[..., dim]`` (official
    ``core.py:343-354``: "remember" bias +1)."""

    dim: int

    @nn.compact
    def __call__(self, h):
        gates = 0.9999 * jax.nn.sigmoid(nn.Dense(3 * self.dim, bias_init=nn.initializers.constant(1.0))(h))
        return jnp.split(gates, 3, axis=-1)


class DiscoveryRNN(nn.Module):
    """DISC's vanilla RNN ``h' = tanh(P·e_t + W·[l_t, z^{i-1}] + U·h + b)`` with the image code's projection
    ``P·e_t`` a separate method: it depends only on the frame, so it is computed once per frame outside the
    object scan and the particles (as AIR does)."""

    hidden: int

    def setup(self):
        self.image_projection = nn.Dense(self.hidden, use_bias=False)
        self.input_projection = nn.Dense(self.hidden)
        self.recurrent = nn.Dense(self.hidden, use_bias=False)

    def project_image(self, image_code):
        return self.image_projection(image_code)

    def __call__(self, h, projected_image, inputs):
        return jnp.tanh(projected_image + self.input_projection(inputs) + self.recurrent(h))


class LearnedVector(nn.Module):
    """A learnable vector (initial RNN states)."""

    size: int

    @nn.compact
    def __call__(self):
        # jnp.asarray: parameters restored to the host are numpy arrays, which traced indices cannot index.
        return jnp.asarray(self.param("value", nn.initializers.zeros, (self.size,)))


class DiscoveryCountLogits(nn.Module):
    """Logits of p_θ(D_t | P_t) (Eq. 5.8) as a table ``[2 (first frame?), N + 1 (P_t), N + 1 (D_t)]``."""

    max_objects: int
    no_new_objects_logit_init: float

    @nn.compact
    def __call__(self):
        n = self.max_objects + 1

        def init(key, shape, dtype=jnp.float32):
            table = jnp.zeros(shape, dtype)
            return table.at[1, :, 0].set(self.no_new_objects_logit_init)

        return jnp.asarray(self.param("logits", init, (2, n, n)))  # see LearnedVector


class ObservationEncoders(nn.Module):
    """Glimpse encoder h^glimpse and image encoder h^enc (§5.A). MLP: two ELU layers each. CONV: one shared CNN
    trunk followed by one fully-connected ELU layer per encoder (§5.D.2)."""

    config: SQAIRConfig

    def setup(self):
        c = self.config
        if c.arch == "mlp":
            self.glimpse_net = _mlp((c.hidden, c.hidden), activate_final=True)
            self.image_net = _mlp((c.hidden, c.hidden), activate_final=True)
        else:
            # Not modules.ConvStack: the trunk's layers are named trunk_<i> in SQAIR's checkpoints. The encoders run
            # under SQAIR's vmap over sequences and particles: plain products (modules.conv_patches).
            self.trunk = [
                modules.PatchConv(
                    ch, (3, 3), strides=(s, s), implementation=c.conv_implementation, materialise_cotangent=False
                )
                for ch, s in zip(c.conv_channels, c.conv_strides)
            ]
            self.glimpse_fc = nn.Dense(c.hidden)
            self.image_fc = nn.Dense(c.hidden)

    def _cnn(self, x):
        lead = x.shape[:-2]
        x = x.reshape((-1,) + x.shape[-2:] + (1,))
        for conv in self.trunk:
            x = nn.elu(conv(x))
        return x.reshape(lead + (-1,))

    def encode_glimpse(self, glimpse):
        """``[..., h, w] -> [..., hidden]``."""
        if self.config.arch == "mlp":
            return self.glimpse_net(glimpse.reshape(glimpse.shape[:-2] + (-1,)))
        return nn.elu(self.glimpse_fc(self._cnn(glimpse)))

    def encode_image(self, image):
        """``[..., H, W] -> [..., hidden]``."""
        if self.config.arch == "mlp":
            return self.image_net(image.reshape(image.shape[:-2] + (-1,)))
        return nn.elu(self.image_fc(self._cnn(image)))


class SQAIRGlimpseDecoder(nn.Module):
    """f^dec: ``z_what [..., D] -> glimpse [..., h, w]`` in (0, 1). MLP: two ELU layers and a sigmoid output layer.
    CONV: FC [2·hidden, 32·(h/4)·(w/4)] -> subpixel CNN [32, 64, 64] with strides [1, 2, 2] -> 3×3 output conv.

    The same function family as ``modules.GlimpseDecoder`` (AIR's) with ELU and per-stage strides, but not the same
    parameter layout (AIR's has separate ``mlp``/``proj``/``subpixel_i``/``out`` layers, this one Linen's automatic
    names ``MLP_0``, ``Conv_i``, as SQAIR's checkpoints), so it is kept as its own module.
    """

    config: SQAIRConfig

    @nn.compact
    def __call__(self, z_what):
        c = self.config
        h, w = c.glimpse_shape
        lead = z_what.shape[:-1]
        out_bias = nn.initializers.constant(c.decoder_output_bias)
        if c.arch == "mlp":
            mlp = modules.MLP((c.hidden, c.hidden, h * w), nn.elu, final_bias_init=out_bias, layer_name="Dense")
            return jax.nn.sigmoid(mlp(z_what).reshape(lead + (h, w)))
        up = int(np.prod(c.decoder_strides))
        bh, bw = h // up, w // up
        x = _mlp((2 * c.hidden, c.decoder_channels[0] * bh * bw), activate_final=True)(z_what)
        x = x.reshape((-1, bh, bw, c.decoder_channels[0]))
        # Named as flax.linen.Conv's automatic names (Conv_<i>), the layout of SQAIR's checkpoints.
        conv = functools.partial(modules.PatchConv, kernel_size=(3, 3), implementation=c.conv_implementation)
        for i, (ch, s) in enumerate(zip(c.decoder_channels, c.decoder_strides)):
            x = nn.elu(modules.depth_to_space(conv(ch * s * s, name=f"Conv_{i}")(x), s))
        x = conv(1, bias_init=out_bias, name=f"Conv_{len(c.decoder_channels)}")(x)
        return jax.nn.sigmoid(x[..., 0]).reshape(lead + (h, w))


class SQAIRGenerative(nn.Module):
    """p_θ's learnable parts (the ``"generative"`` group): the glimpse decoder f^dec (Alg. 1), the propagation prior's
    per-object GRU and heads (Eq. 5.9-5.10) with its learned initial state, and the discovery-count table (Eq. 5.8).

    Methods (``apply(..., method=...)``), on one object's ``[...]`` arrays unless stated: ``decode``,
    ``prior_initial_state``, ``propagation_prior``, ``discovery_count_logits``; ``__call__`` runs each once (for
    ``init``).
    """

    config: SQAIRConfig

    def setup(self):
        c = self.config
        self.glimpse_decoder = SQAIRGlimpseDecoder(c)
        self.prior_rnn = nn.GRUCell(c.hidden)
        self.prior_init = LearnedVector(c.hidden)
        self.prior_pres = _logit_head(c, c.keep_logit_init)
        self.prior_what = _gaussian_head(c, c.z_what_dim)
        self.prior_where = _gaussian_head(c, 4)
        self.disc_count = DiscoveryCountLogits(c.max_objects, c.no_new_objects_logit_init)

    def decode(self, z_what):
        """``z_what [..., D] -> glimpse intensities [..., h, w]`` in (0, 1)."""
        return self.glimpse_decoder(z_what)

    def prior_initial_state(self):
        """``[hidden]``: the prior GRU's state of an object when it is discovered."""
        return self.prior_init()

    def propagation_prior(self, h_prior, z_what_prev, z_where_prev):
        """One step of the per-object prior GRU and the parameters of p^P (Eq. 5.9-5.10): ``(h, keep logit, (what loc,
        what scale), (where loc, where scale))``; the where mean is residual, ``z_where_prev + f(h)``."""
        h, _ = self.prior_rnn(h_prior, jnp.concatenate([z_what_prev, z_where_prev], -1))
        where_loc, where_scale = self.prior_where(h)
        return h, self.prior_pres(h), self.prior_what(h), (z_where_prev + where_loc, where_scale)

    def discovery_count_logits(self):
        """``[2, N + 1, N + 1]``: logits of p_θ(D_t | P_t) indexed by (t > 1, P_t, D_t)."""
        return self.disc_count()

    def __call__(self):
        c = self.config
        self.decode(jnp.zeros((1, c.z_what_dim)))
        self.propagation_prior(self.prior_initial_state(), jnp.zeros((c.z_what_dim,)), jnp.zeros((4,)))
        return self.discovery_count_logits()


class SQAIRInference(nn.Module):
    """q_φ (the ``"inference"`` group): the observation encoders, PROP's networks (proposal MLP, relation RNN, temporal
    GRU and its learned initial state, where/what/presence heads, the gates of the ``"gated"`` what posterior; Alg. 2)
    and DISC's (latent DeepSets encoder, discovery RNN, where/what/presence heads; Alg. 3).

    Methods (``apply(..., method=...)``), on one object's ``[...]`` arrays unless stated: ``encode_image``,
    ``encode_glimpse``, ``propagation_proposal``, ``propagation_relation``, ``propagation_where``,
    ``temporal_step``, ``propagation_what``, ``propagation_presence``, ``temporal_initial_state``, ``latent_code``,
    ``discovery_step``, ``discovery_where``, ``discovery_what``, ``discovery_presence``; ``__call__`` runs each once
    on zeros of one frame (for ``init``: the input widths follow from the data flow).
    """

    config: SQAIRConfig

    def setup(self):
        c = self.config
        H, Dw = c.hidden, c.z_what_dim
        self.encoders = ObservationEncoders(c)
        self.proposal = _mlp((H, 4))
        self.relation_rnn = nn.SimpleCell(H)
        self.temporal_rnn = nn.GRUCell(H)
        self.temporal_init = LearnedVector(H)
        self.prop_where = _gaussian_head(c, 4, c.where_posterior_scale_bias)
        # "gated": this head sees (h^R, h^T) and the glimpse's evidence is DISC's what head; "direct": everything.
        self.prop_what = _gaussian_head(c, Dw)
        if c.prop_what == "gated":
            self.prop_what_gates = WhatGates(Dw)
        self.prop_pres = _logit_head(c, c.prop_presence_logit_init)
        self.latent_encoder = _mlp((H, H), activate_final=True)
        self.disc_rnn = DiscoveryRNN(H)
        ks = c.disc_head_kernel_scale**2  # the output kernel's std scales by disc_head_kernel_scale
        self.disc_pres = _logit_head(c, c.disc_presence_logit_init, ks)
        span = c.max_glimpse_scale - _MIN_SCALE
        scale_logit = 0.0 if c.disc_init_scale is None else _logit((c.disc_init_scale - _MIN_SCALE) / span)
        self.disc_where = _gaussian_head(
            c, 4, c.where_posterior_scale_bias, kernel_scale=ks, loc_bias=(scale_logit, scale_logit, 0.0, 0.0)
        )
        self.disc_what = _gaussian_head(c, Dw)

    def encode_image(self, images):
        """DISC's view of a frame, ``[..., H, W] -> [..., hidden]``: the image code h^enc projected into the discovery
        RNN (Eq. 5.6's input term)."""
        return self.disc_rnn.project_image(self.encoders.encode_image(images))

    def encode_glimpse(self, glimpse):
        """``[..., h, w] -> [..., hidden]``: h^glimpse."""
        return self.encoders.encode_glimpse(glimpse)

    def propagation_proposal(self, where_prev, h_temporal_prev):
        """Alg. 2 line 6: the proposal location ``z_where_{t-1} + prop_update_scale·f(z_where_{t-1}, h^T_{t-1})``."""
        update = self.proposal(jnp.concatenate([where_prev, h_temporal_prev], -1))
        return where_prev + self.config.prop_update_scale * update

    def propagation_relation(self, h_relation, glimpse_code, what_prev, where_prev, h_temporal_prev, what_j, where_j):
        """Alg. 2 line 9 / Eq. 5.14: the relation RNN's next state h^R (j: the last object alive at t−1 before i)."""
        inputs = jnp.concatenate([glimpse_code, what_prev, where_prev, h_temporal_prev, what_j, where_j], -1)
        return self.relation_rnn(h_relation, inputs)[0]

    def propagation_where(self, what_prev, where_prev, h_temporal_prev, h_relation):
        """Alg. 2 line 10 / Eq. 5.12: (loc, scale) of q(z_where_t), ``loc = z_where_{t-1} + prop_update_scale·f``."""
        loc, scale = self.prop_where(jnp.concatenate([what_prev, where_prev, h_temporal_prev, h_relation], -1))
        return where_prev + self.config.prop_update_scale * loc, scale

    def temporal_step(self, h_temporal, glimpse_code, where, h):
        """Eq. 5.15: the temporal GRU's next state from ``[glimpse code, z_where, h]`` (h: h^R in PROP, DISC's RNN
        output for a discovered object)."""
        return self.temporal_rnn(h_temporal, jnp.concatenate([glimpse_code, where, h], -1))[0]

    def propagation_what(self, glimpse_code, what_prev, h_relation, h_temporal):
        """Alg. 2 line 14: (loc, scale) of q(z_what_t), ``"gated"`` or ``"direct"`` (module docstring)."""
        if self.config.prop_what == "gated":
            g_loc, g_scale = self.disc_what(glimpse_code)  # the glimpse's evidence, as DISC reads it
            t_loc, t_scale = self.prop_what(jnp.concatenate([h_relation, h_temporal], -1))
            keep, take, temporal = self.prop_what_gates(h_temporal)
            loc = keep * what_prev + (1 - take) * g_loc + (1 - temporal) * t_loc
            return loc, (1 - take) * g_scale + (1 - temporal) * t_scale
        return self.prop_what(jnp.concatenate([glimpse_code, what_prev, h_relation, h_temporal], -1))

    def propagation_presence(self, what, where, h_relation, h_temporal):
        """Alg. 2 line 15 / Eq. 5.13: the (unbounded) logit of keeping the object."""
        return self.prop_pres(jnp.concatenate([what, where, h_relation, h_temporal], -1))

    def temporal_initial_state(self):
        """``[hidden]``: the learned h^T that a discovered object's temporal GRU starts from."""
        return self.temporal_init()

    def latent_code(self, z_what, z_where, z_pres):
        """Eq. 5.6's DeepSets code of the propagated objects: ``Σ_i z_pres^i f([z_what^i, z_where^i])``, from
        ``[objects, ...]`` arrays."""
        codes = self.latent_encoder(jnp.concatenate([z_what, z_where], -1))
        return jnp.sum(z_pres[:, None] * codes, axis=0)

    def discovery_step(self, h_discovery, image_projection, latent_code, what_prev, where_prev):
        """One step of DISC's RNN (Eq. 5.6), the frame's part ``image_projection`` from :meth:`encode_image`."""
        return self.disc_rnn(h_discovery, image_projection, jnp.concatenate([latent_code, what_prev, where_prev], -1))

    def discovery_where(self, h):
        """(loc, scale) of DISC's q(z_where)."""
        return self.disc_where(h)

    def discovery_what(self, glimpse_code):
        """(loc, scale) of DISC's q(z_what) from the glimpse's code."""
        return self.disc_what(glimpse_code)

    def discovery_presence(self, h, what):
        """DISC's (unbounded) presence logit, from ``[h, z_what]`` (``presence_after_what``; official
        ``core.py:200-208``) or from h alone."""
        return self.disc_pres(jnp.concatenate([h, what], -1) if self.config.presence_after_what else h)

    def __call__(self, image):
        c = self.config
        H, Dw = c.hidden, c.z_what_dim
        h, what, where = jnp.zeros((H,)), jnp.zeros((Dw,)), jnp.zeros((4,))
        projection = self.encode_image(image)
        e = self.encode_glimpse(jnp.zeros(tuple(c.glimpse_shape)))
        # DISC.
        code = self.latent_code(what[None], where[None], jnp.zeros((1,)))
        w = self.discovery_step(h, projection, code, what, where)
        self.discovery_where(w)
        self.discovery_what(e)
        self.discovery_presence(w, what)
        h_temporal = self.temporal_step(self.temporal_initial_state(), e, where, w)
        # PROP.
        self.propagation_proposal(where, h_temporal)
        h_relation = self.propagation_relation(h, e, what, where, h_temporal, what, where)
        self.propagation_where(what, where, h_temporal, h_relation)
        self.propagation_what(e, what, h_relation, h_temporal)
        return self.propagation_presence(what, where, h_relation, h_temporal)


# ----------------------------------------------------------------------------------------------------------------------
# Outputs. Typed (``out.z_pres``) and also read-only Mappings (``out["z_pres"]``, ``dict(out)``, ``out.keys()``), as the
# dicts they replace were: ``chex.dataclass(mappable_dataclass=True)``. They are pytrees (jit, vmap, device_get keep
# the type) and frozen: ``out.replace(name=value)`` gives a modified copy. Axes: B = batch, K = particles, T = time,
# O = objects (``max_objects``), D = ``z_what_dim``, H × W = ``image_shape``.
# z_where as in AIR's outputs (``AIROutput``): ``z_where`` the spatial-transformer parameters
# (ocr_jax.spatial_transformer convention), ``z_where_raw`` the Gaussian latent they come from
# (``SQAIR.to_transform``). Inside the model (the scan state, the per-step dicts, ``_render``) ``z_where`` is the
# Gaussian latent: only :meth:`SQAIR._typed` renames it, when the typed outputs are built.


@chex.dataclass(frozen=True, mappable_dataclass=True)
class SQAIRSteps:
    """Per-frame outputs of inference with leading axes ``[..., T]``: ``[B, K, T, ...]`` from :meth:`SQAIR.infer`,
    ``[T, ...]`` from :meth:`SQAIR.infer_sequence`. The sum over time of ``log_likelihood + log_p_disc + log_p_prop -
    log_q_disc - log_q_prop`` is a particle's log importance weight (Eq. 5.3-5.4)."""

    log_likelihood: jax.Array  # [..., T]          log p(x_t | z_t)
    log_p_disc: jax.Array  # [..., T]              log p^D(D_t, z_t^D | P_t)
    log_p_prop: jax.Array  # [..., T]              log p^P(z_t^P | z_{t-1})
    log_q_disc: jax.Array  # [..., T]              log q^D
    log_q_prop: jax.Array  # [..., T]              log q^P
    log_q_pres: jax.Array  # [..., T]              the presence variables' part of log q^D + log q^P
    z_what: jax.Array  # [..., T, O, D]
    z_where: jax.Array  # [..., T, O, 4]           spatial-transformer (s_x, s_y, t_x, t_y) = to_transform(z_where_raw)
    z_where_raw: jax.Array  # [..., T, O, 4]       the Gaussian latent ẑ_where (unconstrained)
    z_pres: jax.Array  # [..., T, O]               0./1.
    ids: jax.Array  # [..., T, O] int32            identity, −1 where absent
    propagated: jax.Array  # [..., T, O] bool      present and propagated from t−1
    num_propagated: jax.Array  # [..., T] int32    P_t
    num_discovered: jax.Array  # [..., T] int32    D_t
    canvas: jax.Array  # [..., T, H, W]            the likelihood's mean


@chex.dataclass(frozen=True, mappable_dataclass=True)
class SQAIROutput(SQAIRSteps):
    """:meth:`SQAIR.infer`'s result: the per-frame outputs ``[B, K, T, ...]`` and ``log_weight``."""

    log_weight: jax.Array  # [B, K]                Σ_t (log p(x_t|z_t) + log p^D + log p^P − log q^D − log q^P)


@chex.dataclass(frozen=True, mappable_dataclass=True)
class SQAIRSample:
    """Frames sampled from the prior (:meth:`SQAIR.generate`: ``[B, T, ...]``; the rollout of
    :meth:`SQAIR.conditional_generate`: ``[B, T', ...]``)."""

    log_p_disc: jax.Array  # [B, T]
    log_p_prop: jax.Array  # [B, T]
    z_what: jax.Array  # [B, T, O, D]
    z_where: jax.Array  # [B, T, O, 4]             spatial-transformer (s_x, s_y, t_x, t_y) = to_transform(z_where_raw)
    z_where_raw: jax.Array  # [B, T, O, 4]         the Gaussian latent ẑ_where (unconstrained)
    z_pres: jax.Array  # [B, T, O]
    ids: jax.Array  # [B, T, O] int32
    propagated: jax.Array  # [B, T, O] bool
    num_propagated: jax.Array  # [B, T] int32
    num_discovered: jax.Array  # [B, T] int32
    canvas: jax.Array  # [B, T, H, W]              the likelihood's mean
    frames: jax.Array  # [B, T, H, W]              the canvas, plus N(0, σ²) noise if noisy


@chex.dataclass(frozen=True, mappable_dataclass=True)
class SQAIRConditionalSample:
    """:meth:`SQAIR.conditional_generate`'s result."""

    inferred: SQAIROutput  # [B, 1, k, ...]        inference on the k given frames (one particle)
    rollout: SQAIRSample  # [B, T', ...]           the prior's continuation
    frames: jax.Array  # [B, k + T', H, W]         the inferred canvases, then the rollout's frames


# ----------------------------------------------------------------------------------------------------------------------
# The model


def _normal_sample(key, loc, scale, posterior_mean: bool):
    """A reparameterised draw ``loc + scale·ε`` from N(loc, scale²), or ``loc`` itself when ``posterior_mean``."""
    return loc if posterior_mean else loc + scale * jax.random.normal(key, loc.shape)


class SQAIR:
    """SQAIR wired from Linen modules. Stateless: every method is a pure function of ``params`` and its inputs.

    Outputs: ``infer`` -> :class:`SQAIROutput` (per time step, axes ``[batch, particles, time, ...]``, and
    ``log_weight [batch, particles]``), ``infer_sequence`` -> (:class:`SQAIRSteps` ``[time, ...]``, log-weight),
    ``generate`` -> :class:`SQAIRSample` (``[batch, time, ...]``), ``conditional_generate`` ->
    :class:`SQAIRConditionalSample`; each field is documented on its class, and every one is also readable as
    ``out["name"]``. Their shapes are checked (``chex.assert_shape``) before they are returned.

    z_where, as in AIR: every output's ``z_where`` holds the spatial-transformer parameters (s_x, s_y, t_x, t_y)
    (``ocr_jax.spatial_transformer`` convention) and ``z_where_raw`` the Gaussian latent ẑ_where they come from,
    ``z_where = to_transform(z_where_raw)`` (:func:`where_to_transform` under ``where_map``). The priors and posteriors
    (and :meth:`log_joint_terms`' input) are over ``z_where_raw``.

    Boxes: the model returns no boxes, only ``z_where``; the boxes of ``ocr_jax.api.infer_sequences`` and of the
    evaluation (``ocr_jax.evaluation.sqair.boxes_of`` of ``z_where``, ``boxes_of_raw`` of ``z_where_raw``) are the
    **glimpse windows** ``z_where`` in pixel edges (y_min, x_min, y_max, x_max) — where the model attends and pastes
    each object — not tight bounding boxes.

    Public entry points check their inputs through ``ocr_jax.validation`` (ValueError/TypeError naming what was
    received and what to pass): ``init`` (key), ``infer``, ``infer_sequence``, ``conditional_generate`` (frames via
    :meth:`validate_sequence`, particle and step counts, keys) and ``generate`` (counts, key). Keys may be typed
    (``jax.random.key``) or old-style (``jax.random.PRNGKey``, uint32[2]).
    """

    def __init__(self, config: SQAIRConfig):
        self.config = config
        self.generative = SQAIRGenerative(config)
        self.inference = SQAIRInference(config)

    # --- parameters -------------------------------------------------------------------------------------------------

    def init(self, key: jax.Array) -> dict:
        """Returns ``{"generative": ..., "inference": ...}``, each the ``"params"`` collection of
        :class:`SQAIRGenerative` / :class:`SQAIRInference` (``{submodule name: its parameters}``). ``key``:
        ``jax.random.key`` or an old-style ``jax.random.PRNGKey`` (the same bits give the same parameters)."""
        key = validation.check_key(key)
        k_gen, k_inf = jax.random.split(key)
        image = jnp.zeros(tuple(self.config.image_shape), jnp.float32)
        return {
            "generative": self.generative.init(k_gen)["params"],
            "inference": self.inference.init(k_inf, image)["params"],
        }

    def _generative(self, params, method, *args):
        """``SQAIRGenerative.<method>(*args)`` with the parameters ``params["generative"]``."""
        return self.generative.apply({"params": params["generative"]}, *args, method=method)

    def _inference(self, params, method, *args):
        """``SQAIRInference.<method>(*args)`` with the parameters ``params["inference"]``."""
        return self.inference.apply({"params": params["inference"]}, *args, method=method)

    # --- validation -------------------------------------------------------------------------------------------------

    def validate_sequence(self, images) -> None:
        """Raise ``ValueError`` for a batch of sequences ``[batch, time, height, width]`` that does not fit the model:
        wrong rank or frame size (``image_shape``), an empty batch, no frames or more than ``max_seq_len``, a
        non-floating dtype (uint8 included: divide by 255), or (only when the values are concrete, not under jit)
        NaN/inf or values outside [0, 1]. The checks are ``ocr_jax.validation.check_frames``, shared with AIR and
        ``ocr_jax.api``."""
        self._check_frames(images, ("batch", "time", "height", "width"))

    def _check_frames(self, images, axes):
        c = self.config
        validation.check_frames(
            images,
            name="frames",
            axes=axes,
            frame_shape=c.image_shape,
            frame_source=f"SQAIRConfig.image_shape={tuple(c.image_shape)}",
            max_time=c.max_seq_len,
        )

    # --- shared pieces ----------------------------------------------------------------------------------------------

    def _empty_state(self, params):
        # The scan state (and every internal per-step dict) keeps its own name: its ``z_where`` is the Gaussian latent
        # (the public outputs' ``z_where_raw``); :meth:`_typed` renames it when the typed outputs are built.
        c = self.config
        N, H, Dw = c.max_objects, c.hidden, c.z_what_dim
        return dict(
            z_what=jnp.zeros((N, Dw)),
            z_where=jnp.zeros((N, 4)),
            z_pres=jnp.zeros((N,)),
            ids=jnp.full((N,), -1, jnp.int32),
            h_temporal=jnp.zeros((N, H)),
            h_prior=jnp.zeros((N, H)),
            where_velocity=jnp.zeros((N, 4)),
            next_id=jnp.zeros((), jnp.int32),
        )

    def _render(self, params, z_what, z_where, z_pres, present_only: bool = False):
        """Algorithm 1: ``z_what [..., N, D]``, ``z_where [..., N, 4]`` (the Gaussian latent: the outputs'
        ``z_where_raw``), ``z_pres [..., N]`` -> ``canvas [..., H, W]``
        = Σ_i z_pres^i ST^{-1}(f^dec(z_what^i), to_transform(z_where^i)). ``present_only`` (static): decode through
        :meth:`_decode_present` (the same canvas; call it where the leading axes are a whole batch, not under a
        ``vmap``)."""
        if present_only:
            glimpses = self._decode_present(params, z_what, z_pres)
        else:
            glimpses = self._generative(params, SQAIRGenerative.decode, z_what)
        return composite_glimpses(glimpses, self.to_transform(z_where), z_pres, self.config.image_shape)

    def decode_capacities(self, num_glimpses: int) -> tuple[int, ...]:
        """The glimpse counts :meth:`_decode_present` may decode for ``num_glimpses`` slots: each of
        ``config.decode_capacities`` times ``num_glimpses``, rounded up to a multiple of 8, and ``num_glimpses``
        itself; ascending, without repeats."""
        caps = {min(num_glimpses, 8 * math.ceil(f * num_glimpses / 8)) for f in self.config.decode_capacities}
        return tuple(sorted(caps | {num_glimpses}))

    def _decode_present(self, params, z_what, z_pres):
        """f^dec on the present slots only: ``z_what [..., D]``, ``z_pres [...]`` -> glimpses ``[..., h, w]``, equal
        to ``decode(z_what)`` where ``z_pres > 0`` and 0 elsewhere (``composite_glimpses`` weighs every glimpse by its
        presence, so the canvas is the same).

        The n slots are ordered present-first (a stable sort), and the decoder runs on the first C of them, C the
        smallest of :meth:`decode_capacities` that holds every present slot. The first C_0 (the smallest capacity)
        are always decoded, at the top level; the slots from C_0 to C go through a ``lax.switch`` over one branch per
        capacity, which keeps the shapes static. A trained model has about a third of its slots present (one digit
        per frame on average, three slots), so the decoder — most of CONV-SQAIR's step — does a third to a half of
        the work, and the switch only a third of that (measured in docs/results.md). With ``config.decode_remat``
        the branches are rematerialised: differentiating a switch makes every branch return all branches'
        residuals (the others' as zeros), and a rematerialised branch's residuals are its inputs."""
        lead, dim = z_what.shape[:-1], z_what.shape[-1]
        h, w = self.config.glimpse_shape
        n = math.prod(lead)
        what = z_what.reshape(n, dim)
        present = z_pres.reshape(n) > 0
        caps = self.decode_capacities(n)

        def decode(slots):
            glimpses = self._generative(params, SQAIRGenerative.decode, what[slots])
            return jnp.where(present[slots, None, None], glimpses, 0.0)

        def scatter(order, start, stop):  # slots order[start:stop] decoded, every other slot 0
            if start == stop:
                return jnp.zeros((n, h, w), what.dtype)
            slots = order[start:stop]
            return jnp.zeros((n, h, w), what.dtype).at[slots].set(decode(slots), unique_indices=True)

        base = caps[0]
        if base == n:
            return decode(slice(None)).reshape(lead + (h, w))

        def beyond_base(cap):
            branch = functools.partial(scatter, start=base, stop=cap)
            return jax.checkpoint(branch) if self.config.decode_remat else branch

        order = jnp.argsort(~present, stable=True)
        which = jnp.searchsorted(jnp.asarray(caps), jnp.sum(present))
        glimpses = scatter(order, 0, base) + jax.lax.switch(which, [beyond_base(cap) for cap in caps], order)
        return glimpses.reshape(lead + (h, w))

    def object_ink(self, params, z_what, z_where):
        """The brightest pixel each object draws on the canvas: ``[...] = max_{y,x} ST^{-1}(f^dec(z_what),
        z_where)[y, x]`` for ``z_what [..., D]`` and the spatial-transformer ``z_where [..., 4]`` (the outputs'
        ``z_where``, not ``z_where_raw``), in [0, 1); presence is not applied.

        One term of Algorithm 1's canvas sum on its own. An object whose window the model holds at the canvas edge
        while its digit is outside (``shift_bound > 1``) may keep part of the window on the canvas yet draw nothing
        there; this is what tells it from an object whose digit shows a sliver (``eval.visible_min_ink``,
        ``ocr_jax.evaluation.sqair.visible_objects``)."""
        glimpses = self._generative(params, SQAIRGenerative.decode, z_what)
        return jnp.max(paste_glimpse(glimpses, z_where, self.config.image_shape), axis=(-2, -1))

    def to_transform(self, z_where_raw):
        """The Gaussian latent ``z_where_raw [..., 4]`` -> the spatial-transformer ``z_where [..., 4]`` (s_x, s_y, t_x,
        t_y) under this model's ``where_map``."""
        c = self.config
        return where_to_transform(z_where_raw, c.where_map, c.shift_bound, c.max_glimpse_scale)

    def _typed(self, cls, out: dict, **extra):
        """The typed output ``cls(**out, **extra)`` of an internal dict whose ``z_where`` is the Gaussian latent (as
        the scan state names it): that becomes ``z_where_raw``, and ``z_where`` the spatial-transformer parameters
        ``to_transform(z_where_raw)``, as in AIR's outputs. Nothing else is computed: the transform is only read."""
        out = dict(out, **extra)
        raw = out.pop("z_where")
        return cls(**out, z_where=self.to_transform(raw), z_where_raw=raw)

    def _log_likelihood(self, image, canvas):
        """log N(image; canvas, σ²) summed over each frame's pixels: ``[..., H, W] -> [...]``."""
        return jnp.sum(distrax.Normal(canvas, self.config.obs_std).log_prob(image), axis=(-2, -1))

    def _disc_count_prior(self, params, is_first, num_prop) -> distrax.Categorical:
        """p^D(D_t | P_t) (Eq. 5.8), a categorical over D_t ∈ {0..N − P_t}: the learned table, or in frame 1, with
        ``first_frame_continue_prob`` = ρ > 0, the fixed truncated geometric ``p(D_1 = n) ∝ ρ^n`` (AIR's count
        prior)."""
        c = self.config
        N = c.max_objects
        logits = self._generative(params, SQAIRGenerative.discovery_count_logits)[jnp.where(is_first, 0, 1), num_prop]
        if c.first_frame_continue_prob > 0:
            geometric = jnp.arange(N + 1, dtype=jnp.float32) * math.log(c.first_frame_continue_prob)
            logits = jnp.where(is_first, geometric, logits)
        return truncated_categorical(logits, N - num_prop)

    def _disc_count_log_prob(self, params, is_first, num_prop, num_disc):
        """log p^D(D_t | P_t) (Eq. 5.8)."""
        return self._disc_count_prior(params, is_first, num_prop).log_prob(num_disc)

    def _disc_prior_log_prob(self, z_what, z_where):
        c = self.config
        return diag_normal_log_prob(z_what, 0.0, 1.0) + diag_normal_log_prob(
            z_where, jnp.asarray(c.where_prior_loc), jnp.asarray(c.where_prior_scale)
        )

    def _prop_prior(self, params, h_prior, z_what_prev, z_where_prev, where_velocity):
        """One step of the per-object prior GRU and the parameters of p^P (Eq. 5.9-5.10); with ``prop_velocity`` the
        where mean is extrapolated by ``where_velocity [4]`` (the object's last displacement)."""
        h, logit, what, (r_loc, r_scale) = self._generative(
            params, SQAIRGenerative.propagation_prior, h_prior, z_what_prev, z_where_prev
        )
        if self.config.prop_velocity:
            r_loc = r_loc + where_velocity
        return h, logit, what, (r_loc, r_scale)

    def _displacement(self, z_where, z_where_prev):
        """``[..., 4]``: the displacement that ``prop_velocity`` extrapolates — ``z_where − z_where_prev`` in the shift
        coordinates, 0 in the scale ones; all 0 without ``prop_velocity``."""
        if not self.config.prop_velocity:
            return jnp.zeros_like(z_where)
        return jnp.concatenate([jnp.zeros_like(z_where[..., :2]), z_where[..., 2:] - z_where_prev[..., 2:]], -1)

    @staticmethod
    def _compact(pres, arrays: dict):
        """Stably move present slots to the front: returns the permuted arrays."""
        order = jnp.argsort(1.0 - pres, stable=True)
        return {k: v[order] for k, v in arrays.items()}

    def _merge(self, state_prop, state_disc, num_prop, next_id):
        """Slots 0..P−1: compacted propagated objects; slots P..N−1: discovery steps 0..N−1−P."""
        N = self.config.max_objects
        slot = jnp.arange(N)
        is_prop = slot < num_prop
        disc_idx = jnp.clip(slot - num_prop, 0, N - 1)
        merged = {}
        for k in state_prop:
            a, b = state_prop[k], state_disc[k][disc_idx]
            merged[k] = jnp.where(is_prop.reshape((N,) + (1,) * (a.ndim - 1)), a, b)
        pres = merged["z_pres"]
        new_ids = next_id + disc_idx.astype(jnp.int32)
        merged["ids"] = jnp.where(pres > 0, jnp.where(is_prop, merged["ids"], new_ids), -1).astype(jnp.int32)
        merged["z_what"] = merged["z_what"] * pres[:, None]
        merged["z_where"] = merged["z_where"] * pres[:, None]
        return merged, is_prop & (pres > 0)

    def _merge_frame(self, state_prop, state_disc, num_prop, num_disc, next_id):
        """A frame's objects (:meth:`_merge`, identities from ``next_id``): (new state, the outputs that inference
        and generation share). No canvas: nothing recurrent reads it, so inference and generation render every frame
        at once after their time scans (:meth:`_render_frames`, :meth:`_rollout`)."""
        new_state, propagated = self._merge(state_prop, state_disc, num_prop, next_id)
        new_state["next_id"] = next_id + num_disc
        out = {k: new_state[k] for k in ("z_what", "z_where", "z_pres", "ids")}
        return new_state, dict(out, propagated=propagated, num_propagated=num_prop, num_discovered=num_disc)

    def _render_frames(self, params, images, out, present_only: bool = False):
        """Every frame's canvas and log p(x_t | z_t) (Algorithm 1, Eq. 5.3) from the per-step outputs ``out``
        (``z_what [..., T, N, D]``, ``z_where [..., T, N, 4]`` the Gaussian latent, ``z_pres [..., T, N]``) and
        ``images`` broadcastable to ``[..., T, H, W]``: ``out`` plus ``canvas [..., T, H, W]`` and ``log_likelihood
        [..., T]``; ``present_only`` as in :meth:`_render`.

        Decoding outside the time scan gives the decoder one batch of glimpses (B·K·T·N in :meth:`_infer_batch`)
        instead of N per scan iteration: XLA:CPU runs a convolution's gradient inside a loop body through a slow path
        (CONV-SQAIR's step at two frames: 43.6 s, 35.4 s of it one decoder convolution's gradient, which takes 0.14 s
        outside the loop; docs/results.md)."""
        canvas = self._render(params, out["z_what"], out["z_where"], out["z_pres"], present_only)
        return dict(out, canvas=canvas, log_likelihood=self._log_likelihood(images, canvas))

    # --- inference (Algorithms 2 and 3) -----------------------------------------------------------------------------

    def _propagate(self, params, image, state, key, posterior_means: bool = False):
        """PROP (Alg. 2, Eq. 5.11-5.15) over the N slots in order, and the propagation prior (Eq. 5.9-5.10).
        ``posterior_means`` (static): z_where and z_what are their posterior means, not samples."""
        c = self.config
        N, H, Dw = c.max_objects, c.hidden, c.z_what_dim
        keys = jax.random.split(key, N)

        def glimpse_code(z_where):
            g = extract_glimpse(image, self.to_transform(z_where), c.glimpse_shape)
            return self._inference(params, SQAIRInference.encode_glimpse, g)

        # Alg. 2 lines 6-8: proposal location from (z_where_{t-1}, h^T_{t-1}), proposal glimpse, its encoding. They
        # depend on the slot's own state at t−1 only, so the N slots' proposal glimpses are encoded in one batch
        # before the scan over objects, not one slot at a time inside it.
        proposals = jax.vmap(functools.partial(self._inference, params, SQAIRInference.propagation_proposal))(
            state["z_where"], state["h_temporal"]
        )
        if c.prop_velocity:
            proposals = proposals + state["where_velocity"]
        proposal_codes = jax.vmap(glimpse_code)(proposals)

        def step(carry, xs):
            h_rel, what_j, where_j = carry
            what_prev, where_prev, alive, h_t_prev, h_p_prev, velocity, e_hat, k = xs
            k_where, k_what, k_pres = jax.random.split(k, 3)
            # Line 9 / Eq. 5.14 (h^{R,j}: j = last object alive at t−1 before i).
            w_rel = self._inference(
                params,
                SQAIRInference.propagation_relation,
                h_rel,
                e_hat,
                what_prev,
                where_prev,
                h_t_prev,
                what_j,
                where_j,
            )
            # Line 10 / Eq. 5.12 second line.
            loc, scale = self._inference(
                params, SQAIRInference.propagation_where, what_prev, where_prev, h_t_prev, w_rel
            )
            if c.prop_velocity:
                loc = loc + velocity
            where = _normal_sample(k_where, loc, scale, posterior_means)
            log_q_where = diag_normal_log_prob(where, loc, scale)
            # Lines 11-13 / Eq. 5.15.
            e = glimpse_code(where)
            w_temp = self._inference(params, SQAIRInference.temporal_step, h_t_prev, e, where, w_rel)
            # Line 14.
            loc, scale = self._inference(params, SQAIRInference.propagation_what, e, what_prev, w_rel, w_temp)
            what = _normal_sample(k_what, loc, scale, posterior_means)
            log_q_what = diag_normal_log_prob(what, loc, scale)
            # Line 15 / Eq. 5.13: Bernoulli · δ(z_pres_{t−1} = 1).
            pres_logit = bound_logit(
                self._inference(params, SQAIRInference.propagation_presence, what, where, w_rel, w_temp),
                c.prop_presence_logit_bound,
            )
            pres = _sample_bernoulli(k_pres, pres_logit) * alive
            log_q_pres = alive * distrax.Bernoulli(logits=pres_logit).log_prob(pres)
            # Propagation prior, evaluated on the same object.
            h_p, prior_logit, (w_loc, w_scale), (r_loc, r_scale) = self._prop_prior(
                params, h_p_prev, what_prev, where_prev, velocity
            )
            log_p_pres = alive * distrax.Bernoulli(logits=prior_logit).log_prob(pres)
            log_p_cont = pres * (
                diag_normal_log_prob(what, w_loc, w_scale) + diag_normal_log_prob(where, r_loc, r_scale)
            )
            log_q_cont = pres * (log_q_where + log_q_what)
            # Line 16: only objects alive at t−1 advance j.
            new_carry = jax.tree.map(lambda new, old: jnp.where(alive > 0, new, old), (w_rel, what, where), carry)
            out = dict(
                z_what=what,
                z_where=where,
                z_pres=pres,
                h_temporal=w_temp,
                h_prior=h_p,
                where_velocity=self._displacement(where, where_prev),
                log_q=log_q_pres + log_q_cont,
                log_q_pres=log_q_pres,
                log_p=log_p_pres + log_p_cont,
            )
            return new_carry, out

        init = (jnp.zeros((H,)), jnp.zeros((Dw,)), jnp.zeros((4,)))
        xs = (
            state["z_what"],
            state["z_where"],
            state["z_pres"],
            state["h_temporal"],
            state["h_prior"],
            state["where_velocity"],
            proposal_codes,
            keys,
        )
        _, out = jax.lax.scan(step, init, xs, unroll=c.scan_unroll)
        return out

    def _discover(
        self,
        params,
        image,
        image_projection,
        prop,
        num_prop,
        key,
        is_first=True,
        later_bias=None,
        posterior_means: bool = False,
    ):
        """DISC (Alg. 3): AIR conditioned on the DeepSets code of the propagated objects (Eq. 5.6), N masked steps of
        which only the first N − P_t may be present; also the discovery prior of the continuous latents (Eq. 5.7).
        ``posterior_means`` (static): z_where and z_what are their posterior means, not samples."""
        c = self.config
        N, H, Dw = c.max_objects, c.hidden, c.z_what_dim
        keys = jax.random.split(key, N)
        latent_code = self._inference(
            params, SQAIRInference.latent_code, prop["z_what"], prop["z_where"], prop["z_pres"]
        )
        h_temporal_init = self._inference(params, SQAIRInference.temporal_initial_state)
        # The presence-logit offset of frames t > 1; −inf closes discovery there exactly (no sample, no log q term, no
        # gradient), where a finite offset can be outgrown by DISC's unbounded logit.
        later = jnp.asarray(c.disc_later_presence_bias if later_bias is None else later_bias, jnp.float32)
        closed = jnp.isneginf(later)
        offset = jnp.where(jnp.logical_or(is_first, closed), 0.0, later)
        discovery_open = jnp.logical_or(is_first, jnp.logical_not(closed)).astype(jnp.float32)

        def step(carry, xs):
            h_disc, what_prev, where_prev, running = carry
            i, k = xs
            k_pres, k_where, k_what = jax.random.split(k, 3)
            allowed = running * (i < N - num_prop) * discovery_open
            w = self._inference(
                params, SQAIRInference.discovery_step, h_disc, image_projection, latent_code, what_prev, where_prev
            )
            loc, scale = self._inference(params, SQAIRInference.discovery_where, w)
            where = _normal_sample(k_where, loc, scale, posterior_means)
            log_q_where = diag_normal_log_prob(where, loc, scale)
            g = extract_glimpse(image, self.to_transform(where), c.glimpse_shape)
            e = self._inference(params, SQAIRInference.encode_glimpse, g)
            loc, scale = self._inference(params, SQAIRInference.discovery_what, e)
            what = _normal_sample(k_what, loc, scale, posterior_means)
            log_q_what = diag_normal_log_prob(what, loc, scale)
            raw_logit = self._inference(params, SQAIRInference.discovery_presence, w, what)
            pres_logit = bound_logit(raw_logit, c.disc_presence_logit_bound)
            if c.disc_presence_bound_frames == "first":
                pres_logit = jnp.where(is_first, pres_logit, raw_logit)
            pres_logit = pres_logit + offset
            pres = _sample_bernoulli(k_pres, pres_logit) * allowed
            log_q_pres = allowed * distrax.Bernoulli(logits=pres_logit).log_prob(pres)
            h_temp = self._inference(params, SQAIRInference.temporal_step, h_temporal_init, e, where, w)
            out = dict(
                z_what=what,
                z_where=where,
                z_pres=pres,
                h_temporal=h_temp,
                log_q=log_q_pres + pres * (log_q_where + log_q_what),
                log_q_pres=log_q_pres,
                log_p_cont=pres * self._disc_prior_log_prob(what, where),
            )
            return (w, what, where, running * pres), out

        init = (jnp.zeros((H,)), jnp.zeros((Dw,)), jnp.zeros((4,)), jnp.ones(()))
        _, out = jax.lax.scan(step, init, (jnp.arange(N), keys), unroll=c.scan_unroll)
        return out

    def _nothing_propagated(self, state):
        """PROP's outputs when no object is alive (frame 1): nothing to compute."""
        N = self.config.max_objects
        return dict(
            z_what=state["z_what"],
            z_where=state["z_where"],
            z_pres=jnp.zeros((N,)),
            h_temporal=state["h_temporal"],
            h_prior=state["h_prior"],
            where_velocity=state["where_velocity"],
            log_q=jnp.zeros((N,)),
            log_q_pres=jnp.zeros((N,)),
            log_p=jnp.zeros((N,)),
        )

    def _infer_step(
        self,
        params,
        state,
        image,
        image_projection,
        t,
        key,
        *,
        first: bool = False,
        later_bias=None,
        posterior_means: bool = False,
    ):
        """One frame of inference for one particle: PROP and DISC (the likelihood comes after the time scan,
        :meth:`_render_frames`). Returns (new state, per-step outputs).
        ``first`` (static): frame 1 of a sequence, whose state is empty, so PROP is skipped."""
        k_prop, k_disc = jax.random.split(key)
        is_first = t == 0
        if first:
            prop = self._nothing_propagated(state)
        else:
            prop = self._propagate(params, image, state, k_prop, posterior_means)
        prop_state = dict(
            z_what=prop["z_what"],
            z_where=prop["z_where"],
            z_pres=prop["z_pres"],
            ids=state["ids"],
            h_temporal=prop["h_temporal"],
            h_prior=prop["h_prior"],
            where_velocity=prop["where_velocity"],
        )
        prop_state = self._compact(prop["z_pres"], prop_state)
        num_prop = jnp.sum(prop["z_pres"]).astype(jnp.int32)
        disc = self._discover(
            params, image, image_projection, prop_state, num_prop, k_disc, is_first, later_bias, posterior_means
        )
        num_disc = jnp.sum(disc["z_pres"]).astype(jnp.int32)
        prior_init = jnp.broadcast_to(
            self._generative(params, SQAIRGenerative.prior_initial_state), disc["h_temporal"].shape
        )
        disc_state = dict(
            z_what=disc["z_what"],
            z_where=disc["z_where"],
            z_pres=disc["z_pres"],
            ids=jnp.full_like(state["ids"], -1),
            h_temporal=disc["h_temporal"],
            h_prior=prior_init,
            where_velocity=jnp.zeros_like(disc["z_where"]),
        )
        new_state, frame = self._merge_frame(prop_state, disc_state, num_prop, num_disc, state["next_id"])
        out = dict(
            frame,
            log_p_disc=self._disc_count_log_prob(params, is_first, num_prop, num_disc) + jnp.sum(disc["log_p_cont"]),
            log_p_prop=jnp.sum(prop["log_p"]),
            log_q_disc=jnp.sum(disc["log_q"]),
            log_q_prop=jnp.sum(prop["log_q"]),
            log_q_pres=jnp.sum(disc["log_q_pres"]) + jnp.sum(prop["log_q_pres"]),
        )
        return new_state, out

    def _infer_particle(
        self,
        params,
        images,
        image_projections,
        key,
        t0=0,
        state=None,
        later_bias=None,
        posterior_means=False,
        render=True,
    ):
        """One particle over a sequence ``images [time, H, W]``; key of frame t is ``fold_in(key, t)``. From an empty
        state (``state is None``), frame 1 runs DISC only and the scan covers frames 2..T. Returns (outputs, log
        weight, last state); with ``render=False`` the outputs have no canvas and the log weight no log p(x_t | z_t)
        (the caller renders: :meth:`_infer_batch`)."""

        def step(carry, xs, first=False):
            st, log_w = carry
            image, projection, t = xs
            st, out = self._infer_step(
                params,
                st,
                image,
                projection,
                t,
                jax.random.fold_in(key, t),
                first=first,
                later_bias=later_bias,
                posterior_means=posterior_means,
            )
            log_w = log_w + (out["log_p_disc"] + out["log_p_prop"] - out["log_q_disc"] - out["log_q_prop"])
            return (st, log_w), out

        def with_likelihood(out, log_w, state):
            if not render:
                return out, log_w, state
            out = self._render_frames(params, images, out)
            return out, log_w + jnp.sum(out["log_likelihood"]), state

        ts = t0 + jnp.arange(images.shape[0])
        if state is not None:
            (state, log_w), out = jax.lax.scan(
                step, (state, jnp.zeros(())), (images, image_projections, ts), unroll=self.config.scan_unroll
            )
            return with_likelihood(out, log_w, state)
        carry, first = step(
            (self._empty_state(params), jnp.zeros(())), (images[0], image_projections[0], ts[0]), first=True
        )
        if images.shape[0] == 1:
            return with_likelihood(jax.tree.map(lambda a: a[None], first), carry[1], carry[0])
        (state, log_w), rest = jax.lax.scan(
            step, carry, (images[1:], image_projections[1:], ts[1:]), unroll=self.config.scan_unroll
        )
        out = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b], axis=0), first, rest)
        return with_likelihood(out, log_w, state)

    def encode_images(self, params, images):
        """DISC's view of every frame, ``[..., H, W] -> [..., hidden]``: the image code h^enc projected into the
        discovery RNN (Eq. 5.6's input term), computed once per frame and shared by all particles and objects."""
        return self._inference(params, SQAIRInference.encode_image, images)

    @staticmethod
    def particle_key(key, batch_index, particle_index):
        """The key particle k of sequence b uses in :meth:`infer` (for reproducing one particle alone)."""
        return jax.random.fold_in(jax.random.fold_in(key, batch_index), particle_index)

    def infer_sequence(self, params, images, key) -> tuple[SQAIRSteps, jax.Array]:
        """One particle for one sequence ``images [time, H, W]`` -> (:class:`SQAIRSteps` with axes ``[time, ...]``,
        log_weight scalar). Uses ``key`` as is (compare ``particle_key``). Inputs are checked as in :meth:`infer`."""
        self._check_frames(images, ("time", "height", "width"))
        key = validation.check_key(key)
        codes = self.encode_images(params, images)
        out, log_w, _ = self._infer_particle(params, images, codes, key)
        out = self._check_steps(self._typed(SQAIRSteps, out), (images.shape[0],))
        chex.assert_shape(log_w, ())
        return out, log_w

    def _check_steps(self, out, lead: tuple[int, ...]):
        """``out`` (:class:`SQAIRSteps` or :class:`SQAIRSample`) after chex checks of its shapes, whose leading axes
        are ``lead`` (ending with time)."""
        c = self.config
        N = c.max_objects
        per_step = [out.log_p_disc, out.log_p_prop, out.num_propagated, out.num_discovered]
        if isinstance(out, SQAIRSteps):
            per_step += [out.log_likelihood, out.log_q_disc, out.log_q_prop, out.log_q_pres]
        chex.assert_shape(per_step, lead)
        chex.assert_shape([out.z_pres, out.ids, out.propagated], lead + (N,))
        chex.assert_shape(out.z_what, lead + (N, c.z_what_dim))
        chex.assert_shape([out.z_where, out.z_where_raw], lead + (N, 4))
        chex.assert_shape(out.canvas, lead + tuple(c.image_shape))
        if isinstance(out, SQAIRSample):
            chex.assert_shape(out.frames, lead + tuple(c.image_shape))
        return out

    def _infer_batch(self, params, images, key, num_particles, later_bias=None, posterior_means=False):
        B = images.shape[0]
        codes = self.encode_images(params, images)  # [batch, time, hidden], shared across particles
        keys = jax.vmap(lambda b: jax.vmap(lambda k: self.particle_key(key, b, k))(jnp.arange(num_particles)))(
            jnp.arange(B)
        )

        def per_sequence(images_b, codes_b, keys_b):
            return jax.vmap(
                lambda k: self._infer_particle(
                    params, images_b, codes_b, k, later_bias=later_bias, posterior_means=posterior_means, render=False
                )
            )(keys_b)

        out, log_w, state = jax.vmap(per_sequence)(images, codes, keys)
        # Every particle's frames rendered at once, decoding only the present glimpses of the whole batch.
        out = self._render_frames(params, images[:, None], out, present_only=True)
        return out, log_w + jnp.sum(out["log_likelihood"], axis=-1), state

    def infer(
        self,
        params,
        images,
        key,
        num_particles: int = 1,
        *,
        disc_later_presence_bias=None,
        posterior_means: bool = False,
    ) -> SQAIROutput:
        """Run inference on ``images [batch, time, H, W]`` with ``num_particles`` (K) independent particles.

        Returns a :class:`SQAIROutput`: per-step outputs ``[batch, particles, time, ...]`` and
        ``log_weight [batch, particles]`` = Σ_t (log p(x_t|z_t) + log p^D + log p^P − log q^D − log q^P).
        ``disc_later_presence_bias`` (a scalar, may be traced) overrides the config's offset of DISC's presence
        logit after frame 1 (a training schedule: ``SQAIRTask.disc_later_bias``). ``posterior_means`` (a Python
        bool): every z_where and z_what is its posterior mean instead of a sample (the presences are still sampled) —
        a deterministic representation for read-outs such as the addition experiment; ``log_weight`` is then no
        importance weight (it ranks the particles by the same terms, at the means).

        Checked: ``images`` by :meth:`validate_sequence` (values only when concrete), ``num_particles`` an int >= 1,
        ``key`` a ``jax.random.key`` or an old-style ``jax.random.PRNGKey`` (uint32[2]; same results for the same
        bits), ``disc_later_presence_bias`` a scalar, finite or −inf (no discovery after frame 1) when concrete.
        ValueError/TypeError otherwise.
        """
        self.validate_sequence(images)
        num_particles = validation.check_count(num_particles, "num_particles")
        key = validation.check_key(key)
        if disc_later_presence_bias is not None:
            if jnp.shape(disc_later_presence_bias) != ():
                raise ValueError(
                    f"disc_later_presence_bias must be a scalar; got shape {jnp.shape(disc_later_presence_bias)}"
                )
            if not validation.is_traced(disc_later_presence_bias):
                error = later_bias_error(disc_later_presence_bias, "disc_later_presence_bias")
                if error:
                    raise ValueError(error)
        images = jnp.asarray(images, jnp.float32)
        if not isinstance(posterior_means, bool):
            raise TypeError(f"posterior_means must be a Python bool; got {type(posterior_means).__name__}")
        out, log_w, _ = self._infer_batch(params, images, key, num_particles, disc_later_presence_bias, posterior_means)
        return self._infer_output(out, log_w, images.shape[:2], num_particles)

    def _infer_output(self, out: dict, log_w, batch_time: tuple[int, int], num_particles: int) -> SQAIROutput:
        B, T = batch_time
        out = self._check_steps(self._typed(SQAIROutput, out, log_weight=log_w), (B, num_particles, T))
        chex.assert_shape(out.log_weight, (B, num_particles))
        return out

    # --- generation -------------------------------------------------------------------------------------------------

    def _prior_step(self, params, state, t, key):
        """One frame sampled from the prior (Eq. 5.3, 5.7-5.10) for one sample. Returns (new state, outputs)."""
        c = self.config
        N = c.max_objects
        Dw = c.z_what_dim
        # Two random draws per frame (each threefry call is costly to compile under scan/vmap).
        k_normal, k_uniform = jax.random.split(key)
        normals = jax.random.normal(k_normal, (2, N, Dw + 4))
        uniforms = jax.random.uniform(k_uniform, (N + 1,))
        alive = state["z_pres"]
        h_p, logit, (w_loc, w_scale), (r_loc, r_scale) = jax.vmap(
            lambda h, a, b, v: self._prop_prior(params, h, a, b, v)
        )(state["h_prior"], state["z_what"], state["z_where"], state["where_velocity"])
        pres = (uniforms[:N] < jax.nn.sigmoid(logit)).astype(jnp.float32) * alive
        what = w_loc + w_scale * normals[0, :, :Dw]
        where = r_loc + r_scale * normals[0, :, Dw:]
        log_p_prop = jnp.sum(
            alive * distrax.Bernoulli(logits=logit).log_prob(pres)
            + pres * (diag_normal_log_prob(what, w_loc, w_scale) + diag_normal_log_prob(where, r_loc, r_scale))
        )
        prop_state = self._compact(
            pres,
            dict(
                z_what=what,
                z_where=where,
                z_pres=pres,
                ids=state["ids"],
                h_temporal=state["h_temporal"],
                h_prior=h_p,
                where_velocity=self._displacement(where, state["z_where"]),
            ),
        )
        num_prop = jnp.sum(pres).astype(jnp.int32)
        is_first = t == 0
        # Inverse-CDF sample of D_t ~ p^D(D_t | P_t) over {0..N − P_t}.
        count_prior = self._disc_count_prior(params, is_first, num_prop)
        cdf = jnp.cumsum(count_prior.probs)
        num_disc = jnp.minimum(jnp.sum(cdf < uniforms[N]), N - num_prop).astype(jnp.int32)
        d_what = normals[1, :, :Dw]
        d_where = jnp.asarray(c.where_prior_loc) + jnp.asarray(c.where_prior_scale) * normals[1, :, Dw:]
        d_pres = (jnp.arange(N) < num_disc).astype(jnp.float32)
        disc_state = dict(
            z_what=d_what,
            z_where=d_where,
            z_pres=d_pres,
            ids=jnp.full((N,), -1, jnp.int32),
            h_temporal=jnp.zeros_like(state["h_temporal"]),
            h_prior=jnp.broadcast_to(
                self._generative(params, SQAIRGenerative.prior_initial_state), state["h_prior"].shape
            ),
            where_velocity=jnp.zeros_like(d_where),
        )
        log_p_disc = count_prior.log_prob(num_disc) + jnp.sum(d_pres * self._disc_prior_log_prob(d_what, d_where))
        new_state, frame = self._merge_frame(prop_state, disc_state, num_prop, num_disc, state["next_id"])
        return new_state, dict(frame, log_p_disc=log_p_disc, log_p_prop=log_p_prop)

    def _rollout(self, params, state, t0, num_steps, key):
        """``num_steps`` frames from the prior after ``state``: the per-step outputs ``[time, ...]``, no canvas (the
        callers render every frame after the scan, as inference does: :meth:`_rendered_frames`)."""

        def step(st, t):
            return self._prior_step(params, st, t, jax.random.fold_in(key, t))

        _, out = jax.lax.scan(step, state, t0 + jnp.arange(num_steps))
        return out

    def _rendered_frames(self, params, out, noise_keys, noisy: bool):
        """Prior outputs ``[batch, time, ...]`` plus ``canvas`` and ``frames [batch, time, H, W]`` (the canvas, plus
        N(0, σ²) noise from ``noise_keys [batch]`` if ``noisy``), the whole batch rendered at once."""
        canvas = self._render(params, out["z_what"], out["z_where"], out["z_pres"], present_only=True)
        noise = jax.vmap(lambda k: jax.random.normal(k, canvas.shape[1:]))(noise_keys)
        return dict(out, canvas=canvas, frames=canvas + noisy * self.config.obs_std * noise)

    def generate(self, params, key, num_sequences: int, num_steps: int, *, noisy: bool = False) -> SQAIRSample:
        """Sample ``num_sequences`` sequences of ``num_steps`` frames from the prior.

        Returns a :class:`SQAIRSample`: the per-step prior outputs ``[batch, time, ...]`` (z's, ids, ``canvas``,
        ``log_p_disc``, ``log_p_prop``) and ``frames [batch, time, H, W]``: the canvas, plus N(0, σ²) noise if
        ``noisy``.
        ``num_sequences`` and ``num_steps`` are ints >= 1 (``num_steps`` may exceed ``max_seq_len``: the prior has no
        length limit); ``key`` typed or old-style (checked).
        """
        num_sequences = validation.check_count(num_sequences, "num_sequences")
        num_steps = validation.check_count(num_steps, "num_steps")
        key = validation.check_key(key)
        keys = jax.random.split(key, num_sequences)

        roll_keys, noise_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        out = jax.vmap(lambda k: self._rollout(params, self._empty_state(params), 0, num_steps, k))(roll_keys)
        out = self._rendered_frames(params, out, noise_keys, noisy)
        return self._check_steps(self._typed(SQAIRSample, out), (num_sequences, num_steps))

    def conditional_generate(
        self, params, images, key, num_steps: int, *, noisy: bool = False
    ) -> SQAIRConditionalSample:
        """Condition on ``images [batch, k, H, W]`` (one particle each, inferred exactly as ``infer(params, images,
        key, 1)``), then propagate/discover from the prior for ``num_steps`` more frames (frame indices k, k+1, ...).

        Returns a :class:`SQAIRConditionalSample`: ``inferred`` (infer's outputs ``[batch, 1, k, ...]``), ``rollout``
        (prior outputs ``[batch, num_steps, ...]``) and ``frames [batch, k + num_steps, H, W]``, whose first k frames
        are the inferred canvases.
        Checked: ``images`` as in :meth:`infer` (k <= ``max_seq_len``), ``num_steps`` an int >= 0 (0: inference
        only; the rollout may go past ``max_seq_len``), ``key`` typed or old-style.
        """
        self.validate_sequence(images)
        num_steps = validation.check_count(num_steps, "num_steps", minimum=0)
        key = validation.check_key(key)
        images = jnp.asarray(images, jnp.float32)
        k_frames = images.shape[1]
        out, log_w, state = self._infer_batch(params, images, key, 1)
        out = self._infer_output(out, log_w, images.shape[:2], 1)
        state = jax.tree.map(lambda a: a[:, 0], state)
        roll_key = jax.random.fold_in(key, 2**30)
        keys = jax.random.split(roll_key, images.shape[0])
        roll_keys, noise_keys = jax.vmap(jax.random.split, out_axes=1)(keys)
        rollout = jax.vmap(lambda st, k: self._rollout(params, st, k_frames, num_steps, k))(state, roll_keys)
        rollout = self._rendered_frames(params, rollout, noise_keys, noisy)
        rollout = self._check_steps(self._typed(SQAIRSample, rollout), (images.shape[0], num_steps))
        frames = jnp.concatenate([out.canvas[:, 0], rollout.frames], axis=1)
        chex.assert_shape(frames, (images.shape[0], k_frames + num_steps) + tuple(self.config.image_shape))
        return SQAIRConditionalSample(inferred=out, rollout=rollout, frames=frames)

    # --- scoring a given trajectory (independent of the inference code path) ---------------------------------------

    def log_joint_terms(self, params, images, z_what, z_where_raw, z_pres, ids):
        """Per-step log p(x_t | z_t), log p^D and log p^P of a given trajectory of one sequence (Eq. 5.3).

        ``images [time, H, W]``; ``z_what [time, objects, D]``, ``z_where_raw [time, objects, 4]`` (the Gaussian latent,
        as the outputs' ``z_where_raw``), ``z_pres [time, objects]``, ``ids [time, objects]``. Objects are matched
        across time by identity (not by slot), so this is a separate code path from inference: an object present at t
        whose identity was present at t−1 is propagated, any other present object is discovered. Returns a dict of
        ``[time]`` arrays.
        """
        c = self.config
        N = c.max_objects
        z_pres = z_pres.astype(jnp.float32)

        def step(carry, xs):
            prev_what, prev_where, prev_pres, prev_ids, h_prior, prev_velocity = carry
            image, what, where, pres, cur_ids, t = xs
            match = ((cur_ids[:, None] == prev_ids[None, :]) & (pres[:, None] > 0) & (prev_pres[None, :] > 0)).astype(
                jnp.float32
            )  # [current, previous]
            h_new, logit, (w_loc, w_scale), (r_loc, r_scale) = jax.vmap(
                lambda h, a, b, v: self._prop_prior(params, h, a, b, v)
            )(h_prior, prev_what, prev_where, prev_velocity)
            kept = jnp.sum(match, axis=0)  # [previous]
            log_p_prop = jnp.sum(prev_pres * distrax.Bernoulli(logits=logit).log_prob(kept))
            is_prop = jnp.sum(match, axis=1)  # [current]
            gather = lambda a: match @ a  # noqa: E731  (parameters of the matched previous object)
            log_p_prop += jnp.sum(
                is_prop
                * (
                    diag_normal_log_prob(what, gather(w_loc), gather(w_scale) + (1 - is_prop)[:, None])
                    + diag_normal_log_prob(where, gather(r_loc), gather(r_scale) + (1 - is_prop)[:, None])
                )
            )
            is_new = pres * (1.0 - is_prop)
            num_prop = jnp.sum(is_prop).astype(jnp.int32)
            num_disc = jnp.sum(is_new).astype(jnp.int32)
            log_p_disc = self._disc_count_log_prob(params, t == 0, num_prop, num_disc) + jnp.sum(
                is_new * self._disc_prior_log_prob(what, where)
            )
            h_cur = (
                gather(h_new) + is_new[:, None] * self._generative(params, SQAIRGenerative.prior_initial_state)[None]
            )
            canvas = self._render(params, what, where, pres)
            ll = self._log_likelihood(image, canvas)
            velocity = is_prop[:, None] * self._displacement(where, gather(prev_where))
            return (what, where, pres, cur_ids, h_cur, velocity), dict(
                log_likelihood=ll, log_p_disc=log_p_disc, log_p_prop=log_p_prop
            )

        T = images.shape[0]
        init = (
            jnp.zeros((N, c.z_what_dim)),
            jnp.zeros((N, 4)),
            jnp.zeros((N,)),
            jnp.full((N,), -1, jnp.int32),
            jnp.zeros((N, c.hidden)),
            jnp.zeros((N, 4)),
        )
        _, out = jax.lax.scan(step, init, (images, z_what, z_where_raw, z_pres, ids, jnp.arange(T)))
        return out

    def num_parameters(self, params) -> dict:
        return {g: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params[g])) for g in params}
