"""AIR: Attend, Infer, Repeat (Eslami et al., 2016); thesis §5.2 and §8.B (Algorithms 4-5); spec AIR.md.

Parameters live in three top-level groups so objectives can treat them differently (docs/DESIGN.md)::

    params = {"generative": ...,   # glimpse decoder (θ); the priors have no learnable parts
              "inference": ...,    # image encoder, recurrent controller, presence/where heads, glimpse encoder (φ)
              "baseline": ...}     # NVILBaseline (ψ), used only by NVIL-style estimators

Each group is a Linen variable dict (``{"params": ...}``) for its module.

Generative model (per image, N = ``max_steps``)
-----------------------------------------------
* Count n ∈ {0..N}: a geometric truncated at N and normalised over {0..N}: ``p(n) ∝ Π_{i≤n} ρ_i`` where ρ_i is the
  per-step "continue" probability (a scalar or a ``[N]`` vector *passed in as a value*, so an annealing schedule can
  change it under ``jit``; see :func:`continue_prob_schedule`). For a scalar ρ this is ``ρ^n / Σ_{m=0}^N ρ^m``.
  z_pres is the unary code of n. The prior factorises over steps as a sequence of conditionals
  ``p(z_pres^i = 1 | z_pres^{<i} = 1) = S_i / S_{i-1}`` with ``S_i = Σ_{m≥i} Π_{j≤m} ρ_j``, so per-step prior terms
  sum exactly to log p(n) (the N-th step has no stopping factor: with n = N there is no step N+1).
* z_what^i ~ N(0, I_D).
* z_where^i: a Gaussian latent ``ẑ^i`` ("raw", ``z_where_raw``) with prior N(where_prior_loc, where_prior_scale²),
  mapped to the spatial-transformer ``z_where`` (convention in ``ocr_jax.spatial_transformer``) by
  ``where_parametrisation``:

  - ``"sigmoid_tanh"`` (default; Kosiorek's AIR): ``s = lo + (hi - lo)·sigmoid(ẑ_s)`` (``scale_range = (lo, hi)``,
    default (0, 1)) and ``t = shift_range·tanh(ẑ_t)``; prior N(0, 1) on every raw component by default.
  - ``"pyro"`` (the Pyro example): ẑ = (s, x, y) is Pyro's *inverse* parametrisation (the object occupies 1/s of
    the canvas): ST scale ``1/s`` and shift ``-x/s, -y/s``; default prior N((3, 0, 0), diag(0.2, 1, 1)²).

  With ``z_where_dim = 4`` the scale is split into (s_x, s_y) in both parametrisations.
* Canvas mean ``y = Σ_i z_pres^i · ST⁻¹(sigmoid(f_dec(z_what^i)), z_where^i)``; likelihood ``"gaussian"``
  N(x | y, σ²) with σ = ``obs_std`` (0.3) or ``"bernoulli"`` Bernoulli(x | clip(y, ε, 1 − ε)).

Inference network
-----------------
``enc = ImageEncoder(x)`` is computed once per image (outside the step scan and outside the particle vmap). For
i = 1..N (``lax.scan``): ``h_i = RNN(h_{i-1}, [enc, z_what^{i-1}, z_where^{i-1}, z_pres^{i-1}])``;
``z_pres^i = z_pres^{i-1} · Bernoulli(sigmoid(presence_logit(h_i)))``; ``ẑ_where^i ~ N(μ(h_i), σ(h_i))``;
``g_i = ST(x, z_where^i)``; ``z_what^i ~ N(μ(g_i), σ(g_i))``. z_pres is a score-function latent (no gradient
through the sample); z_where and z_what are reparameterised.

Masking: every per-step term of step i (log p and log q of z_where^i, z_what^i, and its canvas contribution) is
multiplied out (``jnp.where``, exactly zero) when z_pres^i = 0; the presence terms of step i are zero when
z_pres^{i-1} = 0. Hence log q of the presence path is ``Σ_{present} log q(1) + log q(z_pres^{n+1} = 0)``, the
stopping term being absent when n = N.

Learning signals: ``AIROutput.log_weight = log_likelihood + Σ_i (log_p_step_i − log_q_step_i)``. The learning signal
of the discrete z_pres^i is ``log_likelihood + Σ_{j≥i} (log_p_step_j − log_q_step_j)`` (every downstream term;
:func:`downstream_learning_signal`). NVIL baselines for step i may use ``baseline_image_features`` (x) and
``baseline_step_features[..., i, :]``, which depend on x and z^{<i} only (never on z_pres^i): they are the
controller state h_i and z^{i-1}.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import chex
import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocr_jax import spatial_transformer as st
from ocr_jax import validation
from ocr_jax.distributions import count_log_prior, diag_normal_log_prob, presence_log_prior_steps
from ocr_jax.models import modules

Array = jax.Array
PyTree = Any

__all__ = [
    "AIRConfig",
    "AIROutput",
    "AIRSample",
    "AIR",
    "AIRInference",
    "AIRGenerative",
    "NVILBaseline",
    "count_log_prior",
    "presence_log_prior_steps",
    "continue_prob_schedule",
    "downstream_learning_signal",
    "where_transform",
    "where_inverse_transform",
    "validate_images",
]


@dataclasses.dataclass(frozen=True)
class AIRConfig:
    """Architecture and model settings (hashable: safe as a static jit argument). Defaults follow AIR.md."""

    canvas_shape: tuple[int, int] = (50, 50)
    glimpse_shape: tuple[int, int] = (20, 20)
    max_steps: int = 3
    # Steps of the inference scan unrolled per loop iteration (lax.scan's ``unroll``); True = fully unrolled.
    # Same values either way; unrolling lets XLA fuse across steps (benchmarks/air_throughput.py measures it).
    scan_unroll: int | bool = 1
    z_what_dim: int = 50
    z_where_dim: int = 3  # 3 = (s, tx, ty), 4 = (sx, sy, tx, ty)
    # Image encoder feeding the controller: "raw" | "mlp" | "conv".
    image_encoder: str = "raw"
    image_encoder_hidden: tuple[int, ...] = (256,)
    # Controller.
    rnn: str = "lstm"  # "lstm" | "gru" | "vanilla"
    rnn_hidden: int = 256
    controller_hidden: tuple[int, ...] = ()  # optional MLP between the RNN output and the heads
    # Glimpse encoder / decoder: "mlp" | "conv" (conv decoder = subpixel upsampling).
    glimpse_encoder: str = "mlp"
    glimpse_encoder_hidden: tuple[int, ...] = (256,)
    glimpse_decoder: str = "mlp"
    glimpse_decoder_hidden: tuple[int, ...] = (256,)
    encoder_conv_channels: tuple[int, ...] = (16, 32)
    decoder_conv_channels: tuple[int, ...] = (32, 16)
    decoder_output_bias: float = -2.0
    # Likelihood.
    likelihood: str = "gaussian"  # "gaussian" | "bernoulli"
    obs_std: float = 0.3
    bernoulli_eps: float = 1e-5
    # z_where parametrisation and prior (see module docstring). None = the parametrisation's default prior.
    where_parametrisation: str = "sigmoid_tanh"  # "sigmoid_tanh" | "pyro"
    scale_range: tuple[float, float] = (0.0, 1.0)
    shift_range: float = 1.0
    where_prior_loc: tuple[float, ...] | None = None
    where_prior_scale: tuple[float, ...] | None = None
    # Initialisation (AIR.md): presence probability early, where-mean at a plausible digit scale (ST units, e.g.
    # 28/50 for MNIST digits on a 50x50 canvas), small where-std, small head kernels so the biases dominate.
    init_presence_prob: float = 0.8
    init_scale: float = 0.56
    init_where_std: float = 0.2
    head_kernel_scale: float = 0.1
    # NVIL baseline: an MLP on [x, h_i, z^{i-1}]; with baseline_rnn_hidden > 0, the Pyro example's baseline instead:
    # an LSTM of that width run over the steps on [x, z^{i-1}] (its own recurrence, not the controller's h_i),
    # followed by the MLP head (benchmarks at equal work: ``air_multi_mnist:bench+pyro_baseline``).
    baseline_hidden: tuple[int, ...] = (256,)
    baseline_rnn_hidden: int = 0

    def __post_init__(self):
        check = validation.ConfigCheck(self)
        check.ints_at_least(1, "canvas_shape", "glimpse_shape", length=2)
        check.glimpse_fits("glimpse_shape", "canvas_shape")
        check.int_at_least(1, "max_steps", "z_what_dim", "rnn_hidden")
        check.require(self.z_where_dim in (3, 4), f"z_where_dim must be 3 or 4; got {self.z_where_dim!r}")
        check.require(
            self.scan_unroll is True
            or self.scan_unroll is False
            or (isinstance(self.scan_unroll, int) and self.scan_unroll >= 1),
            f"scan_unroll must be True, False or an int >= 1; got {self.scan_unroll!r}",
        )
        check.one_of("image_encoder", ("raw", "mlp", "conv"))
        check.one_of("rnn", modules.RNN_KINDS)
        check.one_of("glimpse_encoder", ("mlp", "conv"))
        check.one_of("glimpse_decoder", ("mlp", "conv"))
        check.ints_at_least(
            1,
            "image_encoder_hidden",
            "controller_hidden",
            "glimpse_encoder_hidden",
            "glimpse_decoder_hidden",
            "encoder_conv_channels",
            "decoder_conv_channels",
        )
        # The NVIL baseline's first layer and the conv image encoder's projection need at least one hidden size.
        check.ints_at_least(1, "baseline_hidden", nonempty=True)
        check.int_at_least(0, "baseline_rnn_hidden")
        if self.image_encoder == "conv":
            check.ints_at_least(1, "image_encoder_hidden", "encoder_conv_channels", nonempty=True)
        if self.glimpse_encoder == "conv":
            check.ints_at_least(1, "encoder_conv_channels", nonempty=True)
        if self.glimpse_decoder == "conv" and check.require(
            len(self.decoder_conv_channels) > 0, "a conv glimpse_decoder needs decoder_conv_channels"
        ):
            f = 2 ** len(self.decoder_conv_channels)
            check.require(
                all(g % f == 0 for g in self.glimpse_shape),
                f"a conv glimpse decoder with {len(self.decoder_conv_channels)} subpixel stages needs "
                f"glimpse_shape divisible by {f}; got {self.glimpse_shape}",
            )
        check.finite("decoder_output_bias")
        check.one_of("likelihood", ("gaussian", "bernoulli"))
        check.positive("obs_std")
        check.number("bernoulli_eps", lambda v: 0 < v < 0.5, "a number in (0, 0.5)")
        check.one_of("where_parametrisation", ("sigmoid_tanh", "pyro"))
        lo, hi = self.scale_range
        if check.require(0.0 <= lo < hi, f"scale_range must satisfy 0 <= lo < hi; got {self.scale_range}"):
            if self.where_parametrisation == "sigmoid_tanh":
                check.require(
                    lo < self.init_scale < hi,
                    f"init_scale {self.init_scale} must lie inside scale_range {self.scale_range}",
                )
        check.positive("shift_range", "init_scale", "init_where_std")
        for name in ("where_prior_loc", "where_prior_scale"):
            if getattr(self, name) is not None:
                check.number_tuple(name, length=self.z_where_dim, positive=name == "where_prior_scale")
        check.open_unit("init_presence_prob")
        check.non_negative("head_kernel_scale")
        check.done()

    @property
    def num_scales(self) -> int:
        return self.z_where_dim - 2

    @property
    def where_prior(self) -> tuple[np.ndarray, np.ndarray]:
        """(loc, scale) of the Gaussian prior on the raw z_where, each ``[z_where_dim]``."""
        ns = self.num_scales
        if self.where_parametrisation == "sigmoid_tanh":
            loc_d, scale_d = [0.0] * ns + [0.0, 0.0], [1.0] * ns + [1.0, 1.0]
        else:
            loc_d, scale_d = [3.0] * ns + [0.0, 0.0], [0.2] * ns + [1.0, 1.0]
        loc = self.where_prior_loc if self.where_prior_loc is not None else loc_d
        scale = self.where_prior_scale if self.where_prior_scale is not None else scale_d
        return np.asarray(loc, np.float32), np.asarray(scale, np.float32)


# ----------------------------------------------------------------------------------------------------------------
# z_where parametrisation, priors, schedules.


def where_transform(z_where_raw: Array, config: AIRConfig) -> Array:
    """Raw Gaussian latent ``[..., 3|4]`` -> spatial-transformer z_where ``[..., 3|4]`` (module docstring)."""
    ns = config.num_scales
    raw_s, raw_t = z_where_raw[..., :ns], z_where_raw[..., ns:]
    if config.where_parametrisation == "sigmoid_tanh":
        lo, hi = config.scale_range
        return jnp.concatenate([lo + (hi - lo) * jax.nn.sigmoid(raw_s), config.shift_range * jnp.tanh(raw_t)], -1)
    inv_s = 1.0 / raw_s  # Pyro: the glimpse covers 1/s of the canvas, centred at -t/s ([..., 1] broadcasts).
    return jnp.concatenate([inv_s, -raw_t * inv_s], -1)


def where_inverse_transform(z_where: Array, config: AIRConfig) -> Array:
    """Inverse of :func:`where_transform` (scales strictly inside ``scale_range``, shifts inside ±shift_range)."""
    z_where = jnp.asarray(z_where, jnp.float32)
    ns = config.num_scales
    s, t = z_where[..., :ns], z_where[..., ns:]
    if config.where_parametrisation == "sigmoid_tanh":
        lo, hi = config.scale_range
        u = (s - lo) / (hi - lo)
        return jnp.concatenate([jnp.log(u) - jnp.log1p(-u), jnp.arctanh(t / config.shift_range)], -1)
    raw_s = 1.0 / s
    return jnp.concatenate([raw_s, -t * raw_s], -1)


def continue_prob_schedule(step, *, start: float, end: float, duration: float, kind: str = "exponential"):
    """Per-step continue probability ρ at training ``step`` (a value to pass to :meth:`AIR.infer`).

    ``"exponential"``: log-linear interpolation from ``start`` to ``end`` over ``duration`` steps (then constant);
    ``"linear"``: linear interpolation; ``"constant"``: ``end`` throughout. Works on traced ``step``.
    """
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(float(duration), 1.0), 0.0, 1.0)
    if kind == "exponential":
        return jnp.exp((1.0 - frac) * np.log(start) + frac * np.log(end))
    if kind == "linear":
        return (1.0 - frac) * start + frac * end
    if kind == "constant":
        return jnp.asarray(end, jnp.float32)
    raise ValueError(f"unknown schedule kind {kind!r}; expected 'exponential', 'linear' or 'constant'")


# ----------------------------------------------------------------------------------------------------------------
# Input validation.


def validate_images(images, canvas_shape: Sequence[int]) -> None:
    """Check concrete images ``[batch, H, W]`` before training/evaluation (call outside jit).

    Raises ValueError for: wrong rank, canvas size other than ``canvas_shape``, an empty batch, a non-floating dtype
    (uint8 too: divide by 255), NaN/inf pixels, values outside [0, 1] (the checks of :meth:`AIR.infer`, through
    ``ocr_jax.validation``), and for a traced ``images`` (its values cannot be checked).
    """
    if validation.is_traced(images):
        raise ValueError("validate_images needs concrete arrays; call it outside jit")
    validation.check_frames(
        images,
        name="images",
        axes=("batch", "height", "width"),
        frame_shape=canvas_shape,
        frame_source=f"canvas size canvas_shape={tuple(canvas_shape)}",
    )


def _check_continue_prob(continue_prob, max_steps: int) -> None:
    """The count prior's continue probability ρ: a scalar or ``[max_steps]`` float (may be traced); when concrete,
    finite and in [0, 1]. ValueError otherwise."""
    shape = tuple(jnp.shape(continue_prob))
    if shape not in ((), (1,), (max_steps,)):
        raise ValueError(
            f"continue_prob must be a scalar or have shape [max_steps] = ({max_steps},); got shape {shape}"
        )
    validation.check_values(continue_prob, "continue_prob values")


# ----------------------------------------------------------------------------------------------------------------
# Linen modules.


class AIRInference(nn.Module):
    """q_φ: image encoder, recurrent controller with presence/where heads, glimpse encoder (the "inference" group).

    Methods (call with ``apply(..., method=...)``): ``encode_image``, ``initial_state``, ``controller``,
    ``encode_glimpse``; ``__call__`` runs each once (for ``init``).
    """

    config: AIRConfig

    def setup(self):
        c = self.config
        self.image_encoder = modules.ImageEncoder(
            c.image_encoder, c.image_encoder_hidden, c.encoder_conv_channels, name="image_encoder"
        )
        self.cell = modules.HoistedInputRNNCell(c.rnn, c.rnn_hidden, name="controller")
        self.controller_mlp = (
            modules.MLP(c.controller_hidden, activate_final=True, name="controller_mlp")
            if c.controller_hidden
            else None
        )
        kinit = nn.initializers.variance_scaling(c.head_kernel_scale, "fan_in", "truncated_normal")
        self.presence_head = nn.Dense(
            1,
            kernel_init=kinit,
            bias_init=nn.initializers.constant(modules.logit(c.init_presence_prob)),
            name="presence",
        )
        with jax.ensure_compile_time_eval():  # a constant bias: evaluate eagerly even when traced under jit
            init_raw = where_inverse_transform(jnp.asarray([c.init_scale] * c.num_scales + [0.0, 0.0]), c)
        self.where_head = modules.GaussianHead(
            c.z_where_dim,
            loc_bias=tuple(float(v) for v in np.asarray(init_raw)),
            scale_init=c.init_where_std,
            kernel_scale=c.head_kernel_scale,
            name="where",
        )
        self.glimpse_encoder = modules.GlimpseEncoder(
            c.z_what_dim, c.glimpse_encoder, c.glimpse_encoder_hidden, c.encoder_conv_channels, name="glimpse_encoder"
        )

    def encode_image(self, images: Array) -> Array:
        """``[..., H, W] -> [..., E]``: the image's contribution to every controller gate (E = gates × rnn_hidden).

        The controller's input is ``[image_encoder(x), z^{i-1}]``; its image part enters every gate linearly, so
        it is projected here once per image (``modules.HoistedInputRNNCell``) instead of at every step and particle.
        """
        return self.cell.project(self.image_encoder(images))

    def initial_state(self, batch_shape: tuple[int, ...] = ()) -> PyTree:
        return modules.rnn_zero_state(self.config.rnn, self.config.rnn_hidden, batch_shape)

    def controller(self, carry, encoding, prev_what, prev_where, prev_pres):
        """One controller step:
        ``(carry, enc [.., E], z^{i-1}) -> (carry, h_i, presence_logit, where_loc, where_scale)``."""
        inputs = jnp.concatenate([prev_what, prev_where, prev_pres[..., None]], -1)
        carry, _ = self.cell(carry, encoding, inputs)
        h = modules.rnn_output(self.config.rnn, carry)
        feat = self.controller_mlp(h) if self.controller_mlp is not None else h
        presence_logit = self.presence_head(feat)[..., 0]
        where_loc, where_scale = self.where_head(feat)
        return carry, h, presence_logit, where_loc, where_scale

    def encode_glimpse(self, glimpse: Array) -> tuple[Array, Array]:
        """``[..., h, w] -> (loc, scale)`` of q(z_what), each ``[..., D]``."""
        return self.glimpse_encoder(glimpse)

    def __call__(self, images: Array):
        c = self.config
        enc = self.encode_image(images)
        lead = images.shape[:-2]
        carry = self.initial_state(lead)
        out = self.controller(
            carry, enc, jnp.zeros(lead + (c.z_what_dim,)), jnp.zeros(lead + (c.z_where_dim,)), jnp.ones(lead)
        )
        what = self.encode_glimpse(jnp.zeros(lead + tuple(c.glimpse_shape)))
        return out, what


class AIRGenerative(nn.Module):
    """p_θ's learnable part: the glimpse decoder ``z_what [..., D] -> logits [..., h, w]`` (the "generative" group)."""

    config: AIRConfig

    @nn.compact
    def __call__(self, z_what: Array) -> Array:
        c = self.config
        return modules.GlimpseDecoder(
            tuple(c.glimpse_shape),
            c.glimpse_decoder,
            c.glimpse_decoder_hidden,
            c.decoder_conv_channels,
            c.decoder_output_bias,
            name="glimpse_decoder",
        )(z_what)


class NVILBaseline(nn.Module):
    """Per-step input-dependent baseline b_ψ(x, z^{<i}) for NVIL (the "baseline" group).

    ``image_features [..., E]`` (x) and ``step_features [..., particles, steps, F]`` (z^{<i}, see AIROutput: the
    controller's ``h_i`` then the last ``latent_dim`` features ``[z_what^{i-1}, z_where^{i-1}, z_pres^{i-1}]``) ->
    ``[..., particles, steps]``. Callers should pass stop-gradient features (AIROutput already does).

    ``rnn_hidden = 0`` (default): ``relu(Dense(x) + Dense(step_features))`` then the MLP ``hidden[1:]`` and a linear
    output; the image part enters through its own Dense layer added to the step part, so the image features are
    not copied per particle and step. ``rnn_hidden > 0``: the Pyro AIR example's baseline, an LSTM of that width of
    its own, fed ``[x, z^{i-1}]`` at step i (x projected once per image, ``modules.HoistedInputRNNCell``; ``h_i``
    unused), then ``relu(Dense(hidden[0]))``, the MLP ``hidden[1:]`` and a linear output. Either way a learnable
    per-step offset is added at the end.
    """

    hidden: Sequence[int] = (256,)
    max_steps: int = 3
    rnn_hidden: int = 0
    latent_dim: int = 0

    @nn.compact
    def __call__(self, image_features: Array, step_features: Array) -> Array:
        h0 = self.hidden[0]
        if self.rnn_hidden:
            cell = modules.HoistedInputRNNCell("lstm", self.rnn_hidden, name="rnn")
            projected = cell.project(image_features)[..., None, :]  # [..., 1, 4H]: shared by the particles
            latents = step_features[..., -self.latent_dim :]  # [..., K, N, L]
            carry = modules.rnn_zero_state("lstm", self.rnn_hidden, latents.shape[:-2])
            outputs = []
            for i in range(latents.shape[-2]):
                carry, out = cell(carry, projected, latents[..., i, :])
                outputs.append(out)
            h = nn.relu(nn.Dense(h0, name="head")(jnp.stack(outputs, -2)))
        else:
            a = nn.Dense(h0, name="image")(image_features)[..., None, None, :]
            b = nn.Dense(h0, use_bias=False, name="step")(step_features)
            h = nn.relu(a + b)
        if len(self.hidden) > 1:
            h = modules.MLP(tuple(self.hidden[1:]), activate_final=True, name="mlp")(h)
        out = nn.Dense(1, name="out")(h)[..., 0]
        return out + self.param("step_offset", nn.initializers.zeros, (self.max_steps,))


# ----------------------------------------------------------------------------------------------------------------
# Outputs.


class AIROutput(NamedTuple):
    """Result of :meth:`AIR.infer` for ``[batch]`` images and K particles. Axes: B = batch, K = particles,
    N = steps (``max_steps``), D = z_what_dim, Z = z_where_dim (3|4), E/F = feature sizes.

    Every per-step term is exactly 0 where it is masked (see module docstring).
    """

    log_likelihood: Array  # [B, K]      log p(x | z)
    log_p_pres: Array  # [B, K, N]         per-step presence prior terms (sum = log p(n))
    log_p_where: Array  # [B, K, N]        log N(ẑ_where^i; prior), masked by z_pres^i
    log_p_what: Array  # [B, K, N]         log N(z_what^i; 0, I), masked by z_pres^i
    log_q_pres: Array  # [B, K, N]         log q(z_pres^i | ...) (score-function latent), masked by z_pres^{i-1}
    log_q_where: Array  # [B, K, N]        log q(ẑ_where^i | ...) (reparameterised), masked by z_pres^i
    log_q_what: Array  # [B, K, N]         log q(z_what^i | ...) (reparameterised), masked by z_pres^i
    z_pres: Array  # [B, K, N]             float {0, 1}, a unary code (stop-gradient sample)
    presence_logits: Array  # [B, K, N]    logits of q(z_pres^i = 1 | x, z^{<i}) (before masking)
    z_where: Array  # [B, K, N, Z]         spatial-transformer z_where (ocr_jax.spatial_transformer convention)
    z_where_raw: Array  # [B, K, N, Z]     the Gaussian latent ẑ_where
    z_what: Array  # [B, K, N, D]
    glimpses: Array  # [B, K, N, h, w]     decoded glimpse intensities sigmoid(f_dec(z_what)) (unmasked)
    canvas: Array  # [B, K, H, W]          likelihood mean = reconstruction
    baseline_image_features: Array  # [B, E]      stop-gradient image encoding (x)
    baseline_step_features: Array  # [B, K, N, F] stop-gradient [h_i, z_what^{i-1}, z_where^{i-1}, z_pres^{i-1}]

    @property
    def log_p_steps(self) -> Array:
        """``[B, K, N]`` prior terms per step (presence + where + what)."""
        return self.log_p_pres + self.log_p_where + self.log_p_what

    @property
    def log_q_steps(self) -> Array:
        """``[B, K, N]`` posterior terms per step (presence + where + what)."""
        return self.log_q_pres + self.log_q_where + self.log_q_what

    @property
    def log_q_reparam(self) -> Array:
        """``[B, K, N]`` log q of the reparameterised latents (z_where, z_what)."""
        return self.log_q_where + self.log_q_what

    @property
    def log_weight(self) -> Array:
        """``[B, K]`` log p(x, z) − log q(z | x)."""
        return self.log_likelihood + jnp.sum(self.log_p_steps - self.log_q_steps, -1)

    @property
    def counts(self) -> Array:
        """``[B, K]`` int32 number of present objects."""
        return jnp.sum(self.z_pres, -1).astype(jnp.int32)

    def boxes(self, canvas_shape: Sequence[int]) -> Array:
        """``[B, K, N, 4]`` (y_min, x_min, y_max, x_max) in pixel edges; zero for absent steps (DESIGN.md).

        These are the **glimpse windows** given by ``z_where`` (where the model attends and pastes the decoded
        glimpse), not tight bounding boxes of the object's pixels: a window usually has a margin around the digit.
        """
        b = st.z_where_to_box(self.z_where, canvas_shape)
        return jnp.where(self.z_pres[..., None] > 0, b, 0.0)


class AIRSample(NamedTuple):
    """Samples from the generative model (:meth:`AIR.generate`); S = samples."""

    canvas: Array  # [S, H, W]      likelihood mean
    images: Array  # [S, H, W]      a draw from the likelihood
    z_pres: Array  # [S, N]
    z_where: Array  # [S, N, Z]     spatial-transformer z_where
    z_what: Array  # [S, N, D]
    counts: Array  # [S] int32


def downstream_learning_signal(output: AIROutput) -> Array:
    """``[B, K, N]``: for step i, ``log_likelihood + Σ_{j≥i} (log_p_step_j − log_q_step_j)`` — every term that
    depends on z_pres^i (the terms of earlier steps do not). This is the (un-baselined) learning signal of z_pres^i."""
    terms = output.log_p_steps - output.log_q_steps
    return output.log_likelihood[..., None] + jnp.flip(jnp.cumsum(jnp.flip(terms, -1), -1), -1)


# ----------------------------------------------------------------------------------------------------------------
# The model.


class AIR:
    """AIR model: pure functions of ``params = {"generative", "inference", "baseline"}``.

    Usage::

        model = AIR(AIRConfig(...))
        params = model.init(key, images)                 # images [batch, H, W] (shapes only)
        out = model.infer(params, images, key, num_particles=5, continue_prob=rho)   # AIROutput
        b = model.baseline_values(params, out)           # [B, K, N] NVIL baselines
        samples = model.generate(params, key, 16, continue_prob=rho)

    ``infer``/``generate`` are jit/grad friendly (``num_particles``/``num_samples`` static; ``continue_prob`` may
    be traced).

    Public entry points and their input checks (``ocr_jax.validation``; ValueError or TypeError naming what was
    received and what to pass): ``init``, ``infer``, ``infer_with_keys``, ``reconstruct`` check images ``[B, H, W]``
    (rank, the configured ``canvas_shape``, B >= 1, a float dtype: uint8 is rejected with "divide by 255"; finite
    values in [0, 1] only on concrete arrays — under jit values are not known, so check them first with
    :func:`validate_images`), ``num_particles`` an int >= 1 and keys; ``generate`` checks ``num_samples`` >= 1 and
    the key. Keys may be typed (``jax.random.key``) or old-style (``jax.random.PRNGKey``, uint32[2]); both give the
    same results for the same bits. ``continue_prob``: a scalar or ``[N]``, in [0, 1] when concrete.
    """

    def __init__(self, config: AIRConfig):
        self.config = config
        self.inference = AIRInference(config)
        self.generative = AIRGenerative(config)
        self.baseline = NVILBaseline(
            tuple(config.baseline_hidden),
            config.max_steps,
            rnn_hidden=config.baseline_rnn_hidden,
            latent_dim=config.z_what_dim + config.z_where_dim + 1,
        )

    # -- parameters ------------------------------------------------------------------------------------------------

    def init(self, key: Array, images: Array) -> dict[str, PyTree]:
        """Parameters ``{"generative", "inference", "baseline"}``; ``images [batch, H, W]`` fix the shapes only (they
        are checked as in :meth:`infer`). ``key``: ``jax.random.key`` or an old-style ``jax.random.PRNGKey``."""
        c = self.config
        key = validation.check_key(key)
        images = self._check_images(images)
        k_inf, k_gen, k_base = jax.random.split(key, 3)
        inference = self.inference.init(k_inf, images[:1])
        generative = self.generative.init(k_gen, jnp.zeros((1, c.z_what_dim)))
        enc = self.inference.apply(inference, images[:1], method=AIRInference.encode_image)
        feat_dim = c.rnn_hidden + c.z_what_dim + c.z_where_dim + 1
        baseline = self.baseline.init(k_base, enc, jnp.zeros((1, 1, c.max_steps, feat_dim)))
        return {"generative": generative, "inference": inference, "baseline": baseline}

    # -- inference + generative pass --------------------------------------------------------------------------------

    def _check_images(self, images) -> Array:
        """``images [batch, H, W]``: rank, canvas size, batch >= 1, float dtype (uint8 rejected: divide by 255) and,
        when concrete, finite values in [0, 1] (``ocr_jax.validation.check_frames``); returned as a jax array."""
        c = self.config
        images = validation.check_frames(
            images,
            name="images",
            axes=("batch", "height", "width"),
            frame_shape=c.canvas_shape,
            frame_source=f"canvas size AIRConfig.canvas_shape={tuple(c.canvas_shape)}",
        )
        return jnp.asarray(images)

    def infer(
        self,
        params: dict[str, PyTree],
        images: Array,
        key: Array,
        *,
        num_particles: int = 1,
        continue_prob: Any = 0.5,
        forced_presence: Array | None = None,
        encode_per_step: bool = False,
    ) -> AIROutput:
        """Inference network + generative model for ``images [B, H, W]`` with K = ``num_particles``.

        Particle k of image b uses the key ``jax.random.split(key, (B, K))[b, k]`` (see :meth:`infer_with_keys`).

        Checked (``ocr_jax.validation``; ValueError/TypeError with what was received): ``images`` as in
        :func:`validate_images` (values only when concrete, i.e. not under jit), ``num_particles`` an int >= 1,
        ``key`` a ``jax.random.key`` or an old-style ``jax.random.PRNGKey`` (uint32[2], same results for the same
        bits), ``continue_prob`` a scalar or ``[N]`` in [0, 1].
        """
        images = self._check_images(images)
        num_particles = validation.check_count(num_particles, "num_particles")
        key = validation.check_key(key)
        keys = jax.random.split(key, (images.shape[0], num_particles))
        return self.infer_with_keys(
            params,
            images,
            keys,
            continue_prob=continue_prob,
            forced_presence=forced_presence,
            encode_per_step=encode_per_step,
        )

    def infer_with_keys(
        self,
        params: dict[str, PyTree],
        images: Array,
        keys: Array,
        *,
        continue_prob: Any = 0.5,
        forced_presence: Array | None = None,
        encode_per_step: bool = False,
    ) -> AIROutput:
        """As :meth:`infer` with explicit per-particle keys ``[B, K]`` (typed, or old-style ``[B, K, 2]`` uint32).

        Args:
          forced_presence: optional ``[B, K, N]`` {0, 1}: use these presence *draws* instead of sampling (test hook
            and for evaluating given paths); z_pres^i = forced^i · z_pres^{i-1}, and log q/log p are evaluated at
            the resulting path.
          encode_per_step: reference path that recomputes the image encoding inside every step (identical results,
            slower); exists to test that the shared encoding is exact.
        """
        images = self._check_images(images)
        if jnp.ndim(keys) < 2:
            raise ValueError(
                f"keys must have shape [batch, particles] (jax.random.split(key, (batch, particles))); "
                f"got shape {jnp.shape(keys)}"
            )
        B, K = jnp.shape(keys)[:2]
        if B != images.shape[0]:
            raise ValueError(
                f"keys have {B} rows but images have batch size {images.shape[0]} (keys shape {jnp.shape(keys)})"
            )
        if K < 1:
            raise ValueError(f"keys must hold at least one particle per image (K >= 1); got shape {jnp.shape(keys)}")
        keys = validation.check_key(keys, name="keys", batch_shape=(B, K))
        _check_continue_prob(continue_prob, self.config.max_steps)
        c = self.config
        N = c.max_steps
        if forced_presence is not None:
            forced_presence = jnp.asarray(forced_presence, jnp.float32)
            chex.assert_shape(forced_presence, (B, K, N))
        inf_params = params["inference"]

        # The image encoding entering the controller: once per image, shared by all steps and particles.
        encoding = self.inference.apply(inf_params, images, method=AIRInference.encode_image)  # [B, E]

        def one_particle(image, enc, key, forced):
            step_keys = jax.random.split(key, N)

            def step(carry, inputs):
                rnn_carry, prev_what, prev_where, prev_pres = carry
                k, forced_i = inputs
                if encode_per_step:
                    enc_i = self.inference.apply(inf_params, image, method=AIRInference.encode_image)
                else:
                    enc_i = enc
                rnn_carry, h, logit, where_loc, where_scale = self.inference.apply(
                    inf_params, rnn_carry, enc_i, prev_what, prev_where, prev_pres, method=AIRInference.controller
                )
                k_pres, k_where, k_what = jax.random.split(k, 3)
                if forced_i is None:
                    draw = jax.random.bernoulli(k_pres, jax.nn.sigmoid(logit)).astype(jnp.float32)
                else:
                    draw = jax.lax.stop_gradient(forced_i)
                z_pres = prev_pres * draw
                log_q_pres = jnp.where(prev_pres > 0, distrax.Bernoulli(logits=logit).log_prob(draw), 0.0)
                where_raw = where_loc + where_scale * jax.random.normal(k_where, where_loc.shape)
                z_where = where_transform(where_raw, c)
                glimpse = st.extract_glimpse(image, z_where, c.glimpse_shape)
                what_loc, what_scale = self.inference.apply(inf_params, glimpse, method=AIRInference.encode_glimpse)
                z_what = what_loc + what_scale * jax.random.normal(k_what, what_loc.shape)
                present = z_pres > 0
                log_q_where = jnp.where(
                    present, jnp.sum(distrax.Normal(where_loc, where_scale).log_prob(where_raw)), 0.0
                )
                log_q_what = jnp.where(present, jnp.sum(distrax.Normal(what_loc, what_scale).log_prob(z_what)), 0.0)
                step_features = jax.lax.stop_gradient(jnp.concatenate([h, prev_what, prev_where, prev_pres[None]], -1))
                out = dict(
                    z_pres=z_pres,
                    logit=logit,
                    log_q_pres=log_q_pres,
                    log_q_where=log_q_where,
                    log_q_what=log_q_what,
                    where_raw=where_raw,
                    z_where=z_where,
                    z_what=z_what,
                    step_features=step_features,
                )
                return (rnn_carry, z_what, z_where, z_pres), out

            carry0 = (
                self.inference.apply(inf_params, method=AIRInference.initial_state),
                jnp.zeros((c.z_what_dim,)),
                jnp.zeros((c.z_where_dim,)),
                jnp.ones(()),
            )
            _, outs = jax.lax.scan(step, carry0, (step_keys, forced), unroll=c.scan_unroll)
            return outs

        per_particle = jax.vmap(one_particle, in_axes=(None, None, 0, 0 if forced_presence is not None else None))
        per_image = jax.vmap(per_particle, in_axes=(0, 0, 0, 0 if forced_presence is not None else None))
        outs = per_image(images, encoding, keys, forced_presence)  # each [B, K, N, ...]

        z_pres = outs["z_pres"]
        present = z_pres > 0
        prior_loc, prior_scale = c.where_prior
        log_p_where = jnp.where(present, diag_normal_log_prob(outs["where_raw"], prior_loc, prior_scale), 0.0)
        log_p_what = jnp.where(present, diag_normal_log_prob(outs["z_what"], 0.0, 1.0), 0.0)
        log_p_pres = presence_log_prior_steps(z_pres, continue_prob, N)

        glimpses, canvas = self._render(params["generative"], outs["z_what"], outs["z_where"], z_pres)
        log_likelihood = self.log_likelihood(images[:, None], canvas)

        result = AIROutput(
            log_likelihood=log_likelihood,
            log_p_pres=log_p_pres,
            log_p_where=log_p_where,
            log_p_what=log_p_what,
            log_q_pres=outs["log_q_pres"],
            log_q_where=outs["log_q_where"],
            log_q_what=outs["log_q_what"],
            z_pres=z_pres,
            presence_logits=outs["logit"],
            z_where=outs["z_where"],
            z_where_raw=outs["where_raw"],
            z_what=outs["z_what"],
            glimpses=glimpses,
            canvas=canvas,
            baseline_image_features=jax.lax.stop_gradient(encoding),
            baseline_step_features=outs["step_features"],
        )
        chex.assert_shape(result.log_likelihood, (B, K))
        chex.assert_shape([result.log_p_pres, result.log_q_pres, result.z_pres], (B, K, N))
        chex.assert_shape(result.canvas, (B, K) + tuple(c.canvas_shape))
        return result

    def _render(self, gen_params, z_what, z_where, z_pres):
        """Decode and paste: ``z_what [..., N, D], z_where [..., N, Z], z_pres [..., N]`` ->
        ``(glimpses [..., N, h, w], canvas [..., H, W])``; absent steps add exactly zero."""
        glimpses = jax.nn.sigmoid(self.generative.apply(gen_params, z_what))
        present = (z_pres > 0).astype(glimpses.dtype)
        return glimpses, st.composite_glimpses(glimpses, z_where, present, self.config.canvas_shape)

    def log_likelihood(self, images: Array, canvas: Array) -> Array:
        """``log p(x | canvas)`` summed over pixels: ``[..., H, W] -> [...]`` (broadcasting)."""
        c = self.config
        if c.likelihood == "gaussian":
            lp = distrax.Normal(canvas, c.obs_std).log_prob(images)
        else:
            p = jnp.clip(canvas, c.bernoulli_eps, 1.0 - c.bernoulli_eps)
            lp = distrax.Bernoulli(probs=p).log_prob(images)
        return jnp.sum(lp, axis=(-2, -1))

    def baseline_values(self, params: dict[str, PyTree], output: AIROutput) -> Array:
        """NVIL baselines ``[B, K, N]``: b_ψ(x, z^{<i}) from the stop-gradient features of ``output``."""
        return self.baseline.apply(
            params["baseline"],
            jax.lax.stop_gradient(output.baseline_image_features),
            jax.lax.stop_gradient(output.baseline_step_features),
        )

    # -- generation -------------------------------------------------------------------------------------------------

    def generate(
        self, params: dict[str, PyTree], key: Array, num_samples: int, *, continue_prob: Any = 0.5
    ) -> AIRSample:
        """Sample ``num_samples`` scenes from the prior: n ~ truncated geometric, z_what ~ N(0, I), ẑ_where ~ prior.

        ``num_samples`` an int >= 1, ``key`` typed or old-style, ``continue_prob`` as in :meth:`infer` (checked).
        """
        c = self.config
        num_samples = validation.check_count(num_samples, "num_samples")
        key = validation.check_key(key)
        _check_continue_prob(continue_prob, c.max_steps)
        N = c.max_steps
        k_n, k_what, k_where, k_obs = jax.random.split(key, 4)
        n = jax.random.categorical(k_n, count_log_prior(continue_prob, N), shape=(num_samples,))
        z_pres = (jnp.arange(N) < n[:, None]).astype(jnp.float32)
        z_what = jax.random.normal(k_what, (num_samples, N, c.z_what_dim))
        prior_loc, prior_scale = c.where_prior
        where_raw = prior_loc + prior_scale * jax.random.normal(k_where, (num_samples, N, c.z_where_dim))
        z_where = where_transform(where_raw, c)
        _, canvas = self._render(params["generative"], z_what, z_where, z_pres)
        if c.likelihood == "gaussian":
            images = canvas + c.obs_std * jax.random.normal(k_obs, canvas.shape)
        else:
            images = jax.random.bernoulli(k_obs, jnp.clip(canvas, 0.0, 1.0)).astype(jnp.float32)
        return AIRSample(canvas, images, z_pres, z_where, z_what, n.astype(jnp.int32))

    def reconstruct(self, params, images, key, *, num_particles: int = 1, continue_prob: Any = 0.5) -> Array:
        """``[B, K, H, W]`` reconstructions (likelihood means) from posterior samples (inputs checked as in
        :meth:`infer`)."""
        return self.infer(params, images, key, num_particles=num_particles, continue_prob=continue_prob).canvas
