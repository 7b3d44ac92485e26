"""VRNN: the variational recurrent neural network (Chung et al. 2015) as SQAIR's baseline (thesis §5.4.1, App.
5.D.3; spec SQAIR.md "VRNN baseline"), built as the thesis' implementation was: after the FIVO reference code
(Maddison et al. 2017, ``research/fivo/fivo/models/vrnn.py``).

Generative model (time t = 1..T, frames x_t ``[H, W]`` in [0, 1]; x_0 = 0 and ψ^z(z_0) = 0)::

    o_t, c_t = LSTM(c_{t-1}, [ψ^x(x_{t-1}), ψ^z(z_{t-1})])            the deterministic backbone, hidden size J
    p(z_t | z_{<t}, x_{<t}) = N(μ^p(o_t), σ^p(o_t)²)                     one MLP on o_t (mean and std heads)
    p(x_t | z_{≤t}, x_{<t}) = N(ψ^dec(ψ^z(z_t), o_t), 0.3²)              per pixel, σ fixed as for AIR and SQAIR

Inference network (the filtering proposal)::

    q(z_t | z_{<t}, x_{≤t}) = N(μ^q, σ^q²),  μ^q = μ^p(o_t) + MLP_μ([o_t, ψ^x(x_t)]),  σ^q = MLP_σ([o_t, ψ^x(x_t)])

with *separate* MLPs for the mean and the standard deviation (thesis App. 5.D.3). The mean is a residual on the
prior's mean, as in the FIVO code's ``NormalApproximatePosterior`` (``residual_posterior``; off: μ^q = MLP_μ(·)).
Standard deviations are softplus(raw + b) + ``min_scale`` with b set so that they start at ``initial_scale`` (the
FIVO code's raw_sigma_bias 0.25, i.e. softplus(0.25) ≈ 0.83). The decoder's mean is a sigmoid, so it stays in the
pixels' range (as AIR's and SQAIR's glimpses; the thesis does not say).

Networks (thesis App. 5.D.3): every MLP of the prior, the posterior and ψ^z has ``num_layers`` (L) hidden layers of
``hidden`` (H) ELU units. ``arch="mlp"`` (MLP-VRNN): ψ^x and ψ^dec are MLPs with ``data_layers`` (L′) hidden layers
of ``data_hidden`` (H′) units. ``arch="conv"`` (CONV-VRNN): ψ^x is a CNN (``conv_channels``, ``conv_strides``, 3×3,
"SAME") followed by a linear map, ψ^dec an MLP with L hidden layers, a linear map to the CNN's last feature map and
the transposed CNN that mirrors ψ^x back to the frame size. ψ^x and ψ^z end in a linear layer of
``encoded_data_dim`` / ``encoded_latent_dim`` units (the FIVO code's default: the latent size, 165). ELU everywhere.

Parameter counts: :func:`count_parameters`. The thesis' CONV-VRNN (2.6M) is matched within 10 %; its MLP-VRNN
(H = H′ = J = 256, L = L′ = 3: "2.1M") is not: with two 2,500 × 256 pixel layers (1.28M) and the LSTM (0.60M) any
reading of three hidden layers gives ≥ 2.9M (docs/vrnn.md tabulates the readings and the three model sizes).

Parameters: ``{"generative": ..., "inference": ...}``, each a Linen variable dict. ψ^x belongs to the generative
model (it feeds x_{t−1} to the LSTM) and is also read by the proposal (x_t); FIVO and IWAE train θ and φ on the same
bound, so the train step's single backward pass gives ψ^x the gradient of both uses.

The model exposes one filter step (:meth:`VRNN.step`, the proposal and incremental weight of
``ocr_jax.estimators.fivo.particle_filter``); the task runs the filter (a model does not import the estimators).
Axes: ``batch`` (B), ``particles`` (K), ``time`` (T), ``height``/``width``; latents ``[..., latent]`` (D = 165).
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

from ocr_jax import validation
from ocr_jax.distributions import diag_normal_log_prob
from ocr_jax.models import modules

Array = jax.Array
PyTree = Any

__all__ = [
    "THESIS_PARAMETERS",
    "VRNN",
    "VRNNConfig",
    "VRNNGenerative",
    "VRNNInference",
    "VRNNState",
    "VRNNStep",
    "TransposedConvDecoder",
    "count_parameters",
]

# Table 5.D.1 of the thesis: trainable parameters of the reported (medium) models.
THESIS_PARAMETERS = {"mlp": 2.1e6, "conv": 2.6e6}

ARCHS = ("mlp", "conv")
DECONVS = ("phases", "lax")


@dataclasses.dataclass(frozen=True)
class VRNNConfig:
    """Architecture (hashable). Defaults: MLP-VRNN of thesis App. 5.D.3 (H = H′ = J = 256, L = L′ = 3, D = 165)."""

    image_shape: tuple[int, int] = (50, 50)
    latent_dim: int = 165
    arch: str = "mlp"  # "mlp" (MLP-VRNN) | "conv" (CONV-VRNN)
    hidden: int = 256  # H: units of the prior, posterior and ψ^z MLPs (and of ψ^dec's MLP in "conv")
    num_layers: int = 3  # L: their hidden layers
    data_hidden: int = 256  # H′: units of the MLP ψ^x and ψ^dec ("mlp")
    data_layers: int = 3  # L′: their hidden layers ("mlp")
    rnn_hidden: int = 256  # J: the LSTM's hidden size
    encoded_data_dim: int = 165  # output of ψ^x
    encoded_latent_dim: int = 165  # output of ψ^z
    conv_channels: tuple[int, ...] = (32, 32, 32, 64, 64, 64)  # ψ^x's CNN ("conv"); ψ^dec mirrors it
    conv_strides: tuple[int, ...] = (1, 2, 1, 2, 1, 2)
    # how ψ^dec's transposed convolutions are computed (the same function and parameters either way): "phases" (one
    # stride-1 convolution per output phase, modules.conv_transpose_phases) or "lax" (flax's ConvTranspose: an
    # input-dilated convolution, whose gradients are 5-7x slower on XLA:CPU; python -m benchmarks.vrnn_step)
    deconv: str = "phases"
    obs_std: float = 0.3
    residual_posterior: bool = True
    initial_scale: float = 0.8259394  # softplus(0.25): the FIVO code's raw_sigma_bias
    min_scale: float = 1e-4
    decoder_output_bias: float = -2.0  # added to the decoder's logits: it starts at sigmoid(-2) ≈ 0.12, dark frames

    def __post_init__(self):
        check = validation.ConfigCheck(self)
        check.int_at_least(
            1, "latent_dim", "hidden", "data_hidden", "rnn_hidden", "encoded_data_dim", "encoded_latent_dim"
        )
        check.int_at_least(0, "num_layers", "data_layers")
        check.positive("obs_std", "initial_scale", "min_scale")
        check.finite("decoder_output_bias")
        check.require(self.arch in ARCHS, f"arch must be one of {ARCHS}; got {self.arch!r}")
        check.require(self.deconv in DECONVS, f"deconv must be one of {DECONVS}; got {self.deconv!r}")
        check.require(
            len(self.image_shape) == 2 and all(int(s) >= 1 for s in self.image_shape),
            f"image_shape must be (height, width) >= 1; got {self.image_shape!r}",
        )
        check.require(
            len(self.conv_channels) == len(self.conv_strides) >= 1
            and all(int(c) >= 1 for c in self.conv_channels)
            and all(int(s) >= 1 for s in self.conv_strides),
            f"conv_channels and conv_strides must be non-empty, positive and of one length; got "
            f"{self.conv_channels!r}, {self.conv_strides!r}",
        )
        check.require(self.initial_scale > self.min_scale, "initial_scale must exceed min_scale")
        check.done()

    @property
    def num_pixels(self) -> int:
        return int(np.prod(self.image_shape))

    def conv_sizes(self) -> list[tuple[int, int]]:
        """The spatial sizes of ψ^x's CNN: the frame, then after each "SAME" convolution (⌈n / stride⌉)."""
        sizes = [tuple(int(s) for s in self.image_shape)]
        for s in self.conv_strides:
            h, w = sizes[-1]
            sizes.append((-(-h // s), -(-w // s)))
        return sizes


class VRNNState(NamedTuple):
    """A particle's recurrent state: the LSTM carry ``(c, h)`` ``[..., J]`` each and ψ^z(z_{t−1}) ``[..., E_z]``."""

    carry: tuple[Array, Array]
    latent_encoded: Array


class VRNNStep(NamedTuple):
    """One step's per-particle outputs ``[batch, particles, ...]``: the sampled ``z [.., D]``, log p(x_t | ·),
    log p(z_t | ·), log q(z_t | ·) ``[..]``, and the likelihood's mean ``canvas [.., H, W]`` (or None)."""

    z: Array
    log_likelihood: Array
    log_p_z: Array
    log_q_z: Array
    canvas: Array | None = None


def _mlp(hidden: int, layers: int, out: int | None, name: str) -> modules.MLP:
    """``layers`` hidden ELU layers of ``hidden`` units, then a linear layer of ``out`` units (if given)."""
    features = (hidden,) * layers + ((out,) if out is not None else ())
    return modules.MLP(features, activation=nn.elu, activate_final=out is None, name=name)


class TransposedConvDecoder(nn.Module):
    """The transposed CNN of CONV-VRNN's ψ^dec: features ``[..., F]`` -> logits ``[..., H, W]``.

    A linear map (then ELU) to the encoder CNN's last feature map ``[h_L, w_L, c_L]``, then one 3×3 transposed
    convolution per encoder layer in reverse order, each undoing that layer's stride exactly (explicit padding: the
    encoder's ⌈n / s⌉ sizes are mirrored back to the frame size) and mapping to the previous layer's channels (1 for
    the last), ELU between them. ``output_bias`` initialises the last bias (VRNN adds its decoder's offset to the
    logits instead, for both decoders, and keeps it 0 here).
    """

    sizes: Sequence[tuple[int, int]]  # VRNNConfig.conv_sizes()
    channels: Sequence[int]
    strides: Sequence[int]
    output_bias: float = 0.0
    deconv: str = "phases"  # VRNNConfig.deconv

    @nn.compact
    def __call__(self, features: Array) -> Array:
        lead = features.shape[:-1]
        (h, w), c = self.sizes[-1], self.channels[-1]
        y = nn.elu(nn.Dense(h * w * c, name="proj")(features)).reshape((-1, h, w, c))
        n = len(self.channels)
        for j, i in enumerate(reversed(range(n))):  # undo encoder layer i: sizes[i + 1] -> sizes[i]
            s = int(self.strides[i])
            out = 1 if i == 0 else int(self.channels[i - 1])
            pads = []
            for axis in range(2):
                total = self.sizes[i][axis] - (self.sizes[i + 1][axis] - 1) * s + 1  # = lo + hi for kernel 3
                pads.append((1, total - 1))
            binit = nn.initializers.constant(self.output_bias) if i == 0 else nn.initializers.zeros
            layer = modules.PhaseConvTranspose if self.deconv == "phases" else nn.ConvTranspose
            y = layer(out, (3, 3), strides=(s, s), padding=tuple(pads), bias_init=binit, name=f"deconv_{j}")(y)
            if i > 0:
                y = nn.elu(y)
        return y.reshape(lead + tuple(self.sizes[0]))


class VRNNGenerative(nn.Module):
    """θ: ψ^x, ψ^z, the LSTM, the prior and ψ^dec (module docstring). Methods take any leading axes."""

    config: VRNNConfig

    def setup(self):
        c = self.config
        if c.arch == "mlp":
            self.data_encoder = _mlp(c.data_hidden, c.data_layers, c.encoded_data_dim, "data_encoder")
            self.decoder = _mlp(c.data_hidden, c.data_layers, c.num_pixels, "decoder")
        else:
            self.data_cnn = modules.ConvStack(tuple(c.conv_channels), tuple(c.conv_strides), nn.elu, name="data_cnn")
            self.data_proj = nn.Dense(c.encoded_data_dim, name="data_proj")
            self.decoder_mlp = _mlp(c.hidden, c.num_layers, None, "decoder_mlp")
            self.decoder_cnn = TransposedConvDecoder(
                tuple(c.conv_sizes()),
                tuple(c.conv_channels),
                tuple(c.conv_strides),
                deconv=c.deconv,
                name="decoder_cnn",
            )
        self.latent_encoder = _mlp(c.hidden, c.num_layers, c.encoded_latent_dim, "latent_encoder")
        self.rnn = nn.LSTMCell(c.rnn_hidden, name="rnn")
        self.prior_mlp = _mlp(c.hidden, c.num_layers, None, "prior_mlp")
        self.prior_head = modules.GaussianHead(
            c.latent_dim, scale_init=c.initial_scale, min_scale=c.min_scale, name="prior_head"
        )

    def encode_data(self, frames: Array) -> Array:
        """ψ^x: ``[..., H, W] -> [..., E_x]``."""
        if self.config.arch == "mlp":
            return self.data_encoder(frames.reshape(frames.shape[:-2] + (-1,)))
        return self.data_proj(self.data_cnn(frames))

    def encode_latent(self, z: Array) -> Array:
        """ψ^z: ``[..., D] -> [..., E_z]``."""
        return self.latent_encoder(z)

    def transition(self, carry, data_encoded: Array, latent_encoded: Array) -> tuple[Any, Array]:
        """One LSTM step on ``[ψ^x(x_{t−1}), ψ^z(z_{t−1})]``: ``(carry, o_t [..., J])``."""
        return self.rnn(carry, jnp.concatenate([data_encoded, latent_encoded], axis=-1))

    def prior(self, rnn_out: Array) -> tuple[Array, Array]:
        """p(z_t | ·) = N(loc, scale²) from o_t: ``[..., J] -> ([..., D], [..., D])``."""
        return self.prior_head(self.prior_mlp(rnn_out))

    def decode(self, latent_encoded: Array, rnn_out: Array) -> Array:
        """ψ^dec: the likelihood's mean ``[..., H, W]`` in (0, 1) from ψ^z(z_t) and o_t."""
        c = self.config
        h = jnp.concatenate([latent_encoded, rnn_out], axis=-1)
        if c.arch == "mlp":
            logits = self.decoder(h).reshape(h.shape[:-1] + tuple(c.image_shape))
        else:
            logits = self.decoder_cnn(self.decoder_mlp(h))
        # a constant offset: the same as initialising the last bias to it, for either decoder
        return jax.nn.sigmoid(logits + c.decoder_output_bias)

    def __call__(self, frames: Array, z: Array):
        """Runs every network once (for ``init``): frames ``[B, H, W]``, z ``[B, D]``."""
        c = self.config
        data_encoded = self.encode_data(frames)
        latent_encoded = self.encode_latent(z)
        carry = modules.rnn_zero_state("lstm", c.rnn_hidden, frames.shape[:1])
        carry, out = self.transition(carry, data_encoded, latent_encoded)
        return self.prior(out), self.decode(latent_encoded, out)


class VRNNInference(nn.Module):
    """φ: q(z_t | ·) from ``[o_t, ψ^x(x_t)]`` with separate mean and standard-deviation MLPs (module docstring)."""

    config: VRNNConfig

    @nn.compact
    def __call__(self, rnn_out: Array, data_encoded: Array, prior_loc: Array) -> tuple[Array, Array]:
        c = self.config
        h = jnp.concatenate([rnn_out, data_encoded], axis=-1)
        loc = _mlp(c.hidden, c.num_layers, c.latent_dim, "loc_mlp")(h)
        if c.residual_posterior:
            loc = loc + prior_loc
        raw = _mlp(c.hidden, c.num_layers, c.latent_dim, "scale_mlp")(h)
        scale = jax.nn.softplus(raw + modules.inverse_softplus(c.initial_scale - c.min_scale)) + c.min_scale
        return loc, scale


class VRNN:
    """VRNN: pure functions of ``params = {"generative", "inference"}``.

    Usage::

        model = VRNN(VRNNConfig(arch="conv"))
        params = model.init(key)
        inputs = model.filter_inputs(params, frames)        # frames [B, T, H, W] float in [0, 1] -> [T, B, ...]
        state = model.initial_state(B, K)
        state, log_alpha, out = model.step(params, state, jax.tree.map(lambda a: a[t], inputs), key)
        samples = model.generate(params, key, num_samples=4, num_frames=10)

    ``step`` has the signature of ``ocr_jax.estimators.fivo.particle_filter``'s ``step_fn`` (with ``params``
    bound): the task runs the filter (FIVO, or IWAE without resampling).
    """

    def __init__(self, config: VRNNConfig):
        self.config = config
        self.generative = VRNNGenerative(config)
        self.inference = VRNNInference(config)

    # -- parameters ---------------------------------------------------------------------------------------------------

    def init(self, key: Array) -> dict[str, PyTree]:
        """``{"generative": {"params": ...}, "inference": {"params": ...}}``."""
        c = self.config
        key = validation.check_key(key)
        k_gen, k_inf = jax.random.split(key)
        frames = jnp.zeros((1,) + tuple(c.image_shape))
        generative = self.generative.init(k_gen, frames, jnp.zeros((1, c.latent_dim)))
        inference = self.inference.init(
            k_inf, jnp.zeros((1, c.rnn_hidden)), jnp.zeros((1, c.encoded_data_dim)), jnp.zeros((1, c.latent_dim))
        )
        return {"generative": generative, "inference": inference}

    def _gen(self, params, method, *args):
        return self.generative.apply(params["generative"], *args, method=method)

    # -- the filter's step ----------------------------------------------------------------------------------------

    def check_frames(self, frames) -> Array:
        """``frames [batch, time, H, W]`` float in [0, 1] (``ocr_jax.validation.check_frames``)."""
        return jnp.asarray(
            validation.check_frames(
                frames,
                name="frames",
                axes=("batch", "time", "height", "width"),
                frame_shape=self.config.image_shape,
                frame_source=f"VRNNConfig.image_shape={tuple(self.config.image_shape)}",
            )
        )

    def filter_inputs(self, params, frames: Array) -> dict[str, Array]:
        """The per-step inputs of :meth:`step`, time-major: ``frame [T, B, H, W]``, ``data_encoded`` ψ^x(x_t) and
        ``prev_data_encoded`` ψ^x(x_{t−1}) (x_0 = 0) ``[T, B, E_x]``. ψ^x runs once per frame, not per particle."""
        frames = self.check_frames(frames)
        B, T = frames.shape[:2]
        encoded = self._gen(params, VRNNGenerative.encode_data, frames)  # [B, T, E]
        first = self._gen(params, VRNNGenerative.encode_data, jnp.zeros((1,) + tuple(self.config.image_shape)))
        prev = jnp.concatenate([jnp.broadcast_to(first[:, None], (B, 1, encoded.shape[-1])), encoded[:, :-1]], 1)
        chex.assert_shape([encoded, prev], (B, T, self.config.encoded_data_dim))
        time_major = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
        return {
            "frame": time_major(frames),
            "data_encoded": time_major(encoded),
            "prev_data_encoded": time_major(prev),
        }

    def initial_state(self, batch: int, num_particles: int) -> VRNNState:
        """The state before t = 1: a zero LSTM carry and ψ^z(z_0) = 0, ``[batch, particles, ...]``."""
        c = self.config
        shape = (int(batch), int(num_particles))
        return VRNNState(
            carry=modules.rnn_zero_state("lstm", c.rnn_hidden, shape),
            latent_encoded=jnp.zeros(shape + (c.encoded_latent_dim,)),
        )

    def step(
        self, params, state: VRNNState, inputs_t: dict[str, Array], key: Array, *, with_canvas: bool = False
    ) -> tuple[VRNNState, Array, VRNNStep]:
        """One step for every particle: propose z_t ~ q (reparameterised) and weigh it.

        Args:
          state: :class:`VRNNState`, leaves ``[B, K, ...]``; inputs_t: one time slice of :meth:`filter_inputs`
            (``frame [B, H, W]``, ``data_encoded`` and ``prev_data_encoded`` ``[B, E_x]``); key: this step's key.
        Returns:
          ``(state, log_alpha [B, K], VRNNStep)`` with log α_t = log p(z_t | ·) + log p(x_t | z_t, ·) − log q(z_t | ·)
          (FIVO's incremental weight; Σ_t log α_t = log p(x, z) − log q(z | x) for one particle's trajectory).
        """
        c = self.config
        B, K = state.latent_encoded.shape[:2]
        chex.assert_shape(inputs_t["frame"], (B,) + tuple(c.image_shape))
        broadcast = lambda a: jnp.broadcast_to(a[:, None], (B, K) + a.shape[1:])  # noqa: E731
        carry, out = self._gen(
            params, VRNNGenerative.transition, state.carry, broadcast(inputs_t["prev_data_encoded"]),
            state.latent_encoded,
        )  # fmt: skip
        p_loc, p_scale = self._gen(params, VRNNGenerative.prior, out)
        q_loc, q_scale = self.inference.apply(params["inference"], out, broadcast(inputs_t["data_encoded"]), p_loc)
        z = q_loc + q_scale * jax.random.normal(key, q_loc.shape)
        latent_encoded = self._gen(params, VRNNGenerative.encode_latent, z)
        canvas = self._gen(params, VRNNGenerative.decode, latent_encoded, out)  # [B, K, H, W]
        log_likelihood = jnp.sum(distrax.Normal(canvas, c.obs_std).log_prob(inputs_t["frame"][:, None]), axis=(-2, -1))
        log_p_z = diag_normal_log_prob(z, p_loc, p_scale)
        log_q_z = diag_normal_log_prob(z, q_loc, q_scale)
        chex.assert_shape([log_likelihood, log_p_z, log_q_z], (B, K))
        chex.assert_shape(z, (B, K, c.latent_dim))
        outputs = VRNNStep(z, log_likelihood, log_p_z, log_q_z, canvas if with_canvas else None)
        return VRNNState(carry, latent_encoded), log_p_z + log_likelihood - log_q_z, outputs

    # -- generation ---------------------------------------------------------------------------------------------------

    def rollout(
        self, params, state: VRNNState, last_frame: Array, key: Array, num_steps: int, *, feed: str = "mean"
    ) -> dict[str, Array]:
        """Simulates ``num_steps`` frames from the prior, continuing ``state`` (leaves ``[B, ...]``) after
        ``last_frame [B, H, W]``: z_t ~ p(z_t | ·), x_t's mean from ψ^dec. The next step is fed the mean
        (``feed="mean"``, the default: the frames the pictures show) or a sample x_t ~ N(mean, σ²) (``"sample"``:
        the model's exact ancestral sample). Returns ``frames [B, T, H, W]`` (means) and ``z [B, T, D]``."""
        if feed not in ("mean", "sample"):
            raise ValueError(f"feed must be 'mean' or 'sample'; got {feed!r}")
        num_steps = validation.check_count(num_steps, "num_steps")
        c = self.config

        def body(carry, key_t):
            state, frame = carry
            k_z, k_x = jax.random.split(key_t)
            data_encoded = self._gen(params, VRNNGenerative.encode_data, frame)
            rnn_carry, out = self._gen(
                params, VRNNGenerative.transition, state.carry, data_encoded, state.latent_encoded
            )
            p_loc, p_scale = self._gen(params, VRNNGenerative.prior, out)
            z = p_loc + p_scale * jax.random.normal(k_z, p_loc.shape)
            latent_encoded = self._gen(params, VRNNGenerative.encode_latent, z)
            mean = self._gen(params, VRNNGenerative.decode, latent_encoded, out)
            fed = mean if feed == "mean" else mean + c.obs_std * jax.random.normal(k_x, mean.shape)
            return (VRNNState(rnn_carry, latent_encoded), fed), (mean, z)

        _, (frames, z) = jax.lax.scan(body, (state, last_frame), jax.random.split(key, num_steps))
        return {"frames": jnp.swapaxes(frames, 0, 1), "z": jnp.swapaxes(z, 0, 1)}

    def generate(self, params, key: Array, num_samples: int, num_frames: int, *, feed: str = "mean"):
        """Sequences sampled from the generative model (:meth:`rollout` from the initial state and x_0 = 0):
        ``frames [num_samples, T, H, W]`` (likelihood means) and ``z [num_samples, T, D]``."""
        key = validation.check_key(key)
        n = validation.check_count(num_samples, "num_samples")
        state = jax.tree.map(lambda a: a[:, 0], self.initial_state(n, 1))
        return self.rollout(params, state, jnp.zeros((n,) + tuple(self.config.image_shape)), key, num_frames, feed=feed)


def count_parameters(config: VRNNConfig) -> dict[str, int]:
    """Trainable parameters by top-level module (``"generative/rnn"``, ``"inference/loc_mlp"``, ...) and ``"total"``,
    from the shapes alone (``jax.eval_shape``: nothing is computed)."""
    shapes = jax.eval_shape(VRNN(config).init, jax.random.key(0))
    counts: dict[str, int] = {}
    for group, variables in shapes.items():
        for name, tree in variables["params"].items():
            counts[f"{group}/{name}"] = int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
    counts["total"] = int(sum(counts.values()))
    return counts
