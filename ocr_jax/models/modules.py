"""Shared Linen building blocks for AIR/SQAIR: MLPs, glimpse encoders/decoders (MLP and convolutional with a
subpixel decoder), image encoders, and recurrent cell selection.

All modules take unbatched or batched inputs (any leading axes); images/glimpses are ``[..., height, width]``
(single channel, no channel axis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

RNN_KINDS = ("lstm", "gru", "vanilla")


def constant_vector_init(values: Sequence[float]) -> Callable[..., Array]:
    """Bias initialiser returning a fixed vector (shape must match ``len(values)``)."""
    values = np.asarray(values, np.float32)

    def init(key, shape, dtype=jnp.float32):
        del key
        if tuple(shape) != values.shape:
            raise ValueError(f"constant_vector_init: expected shape {values.shape}, got {tuple(shape)}")
        return jnp.asarray(values, dtype)

    return init


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0)."""
    return float(np.log(np.expm1(y)))


def logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


class MLP(nn.Module):
    """Dense layers ``features[0] ... features[-1]`` with ``activation`` between them (and after the last one iff
    ``activate_final``).

    Every kernel is drawn from a truncated normal of variance ``scale / fan_in`` (LeCun normal, Linen's default), with
    ``scale = final_kernel_scale`` for the last layer and 1 for the others; every bias is 0 except the last layer's,
    which ``final_bias_init`` sets. A small ``final_kernel_scale`` makes the last bias dominate at initialisation (the
    heads below). The layers are named ``f"{layer_name}_{i}"``; SQAIR passes ``"Dense"``, the names Linen gave its
    layers automatically when SQAIR's existing checkpoints were written.
    """

    features: Sequence[int]
    activation: Callable[[Array], Array] = nn.relu
    activate_final: bool = False
    final_kernel_scale: float = 1.0
    final_bias_init: Callable[..., Array] = nn.initializers.zeros
    layer_name: str = "dense"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, f in enumerate(self.features):
            last = i == len(self.features) - 1
            x = nn.Dense(
                f,
                kernel_init=nn.initializers.variance_scaling(
                    self.final_kernel_scale if last else 1.0, "fan_in", "truncated_normal"
                ),
                bias_init=self.final_bias_init if last else nn.initializers.zeros,
                name=f"{self.layer_name}_{i}",
            )(x)
            if not last or self.activate_final:
                x = self.activation(x)
        return x


class GaussianHead(nn.Module):
    """``[..., F] -> (loc, scale)`` of a diagonal Gaussian over ``features`` variables, ``scale = softplus(raw + b) +
    min_scale`` with ``b = inverse_softplus(scale_init - min_scale)``, so the scale starts at ``scale_init`` when the
    input's contribution is small.

    ``hidden``: layers (``activation`` after each) before the output layer. The output layer's kernel init is scaled
    by ``kernel_scale`` (variance, as :class:`MLP`'s ``final_kernel_scale``: a small value makes the biases dominate at
    initialisation) and ``loc_bias`` sets the loc's initial bias (default 0).

    Two parameter layouts of the same function (and the same training: ``b`` enters as a bias either way):
    ``joint=False`` (AIR): an MLP ``"mlp"`` (if ``hidden``), then Dense layers ``"loc"`` and ``"scale"``, whose bias
    starts at ``b``. ``joint=True`` (SQAIR's checkpoints): one :class:`MLP` (Linen's automatic name ``MLP_0``) whose
    last layer outputs ``[loc, raw]`` with zero initial raw bias, and ``b`` added as a constant.
    """

    features: int
    loc_bias: Sequence[float] | None = None
    scale_init: float = 1.0
    min_scale: float = 1e-4
    kernel_scale: float = 1.0
    hidden: Sequence[int] = ()
    activation: Callable[[Array], Array] = nn.relu
    joint: bool = False
    layer_name: str = "dense"

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        offset = inverse_softplus(self.scale_init - self.min_scale)
        if self.joint:
            bias = np.zeros(2 * self.features, np.float32)
            if self.loc_bias is not None:
                bias[: self.features] = self.loc_bias
            out = MLP(
                tuple(self.hidden) + (2 * self.features,),
                self.activation,
                final_kernel_scale=self.kernel_scale,
                final_bias_init=constant_vector_init(bias),
                layer_name=self.layer_name,
            )(x)
            loc, raw = jnp.split(out, 2, axis=-1)
            return loc, jax.nn.softplus(raw + offset) + self.min_scale
        if self.hidden:
            x = MLP(tuple(self.hidden), self.activation, activate_final=True, layer_name=self.layer_name, name="mlp")(x)
        kinit = nn.initializers.variance_scaling(self.kernel_scale, "fan_in", "truncated_normal")
        loc_binit = nn.initializers.zeros if self.loc_bias is None else constant_vector_init(self.loc_bias)
        loc = nn.Dense(self.features, kernel_init=kinit, bias_init=loc_binit, name="loc")(x)
        raw = nn.Dense(self.features, kernel_init=kinit, bias_init=nn.initializers.constant(offset), name="scale")(x)
        return loc, jax.nn.softplus(raw) + self.min_scale


class LogitHead(nn.Module):
    """``[..., F] -> [...]``: a Bernoulli logit from an :class:`MLP` (Linen's automatic name ``MLP_0``) with
    ``hidden`` layers and one output unit, whose bias starts at ``bias_init`` and whose kernel init is scaled by
    ``kernel_scale`` (variance, as :class:`GaussianHead`'s)."""

    hidden: Sequence[int] = ()
    bias_init: float = 0.0
    kernel_scale: float = 1.0
    activation: Callable[[Array], Array] = nn.relu
    layer_name: str = "dense"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out = MLP(
            tuple(self.hidden) + (1,),
            self.activation,
            final_kernel_scale=self.kernel_scale,
            final_bias_init=nn.initializers.constant(self.bias_init),
            layer_name=self.layer_name,
        )(x)
        return out[..., 0]


def depth_to_space(x: Array, block: int) -> Array:
    """Subpixel shuffle: ``[..., h, w, c * block**2] -> [..., h * block, w * block, c]``."""
    *lead, h, w, cb = x.shape
    c = cb // (block * block)
    x = x.reshape(*lead, h, w, block, block, c)
    x = jnp.moveaxis(x, -3, -4)  # [..., h, block, w, block, c]
    return x.reshape(*lead, h * block, w * block, c)


def _phase_plan(n: int, stride: int, pad: tuple[int, int], k: int):
    """One spatial axis of ``conv_transpose_phases``: the output length and, for each output phase r < stride, the
    first kernel tap, the number of taps, the number of outputs and the input offset that phase reads."""
    lo, hi = pad
    out_len = (n - 1) * stride + 1 + lo + hi - k + 1
    phases = []
    for r in range(stride):
        taps = [j for j in range(k) if (r + j - lo) % stride == 0]
        count = max(0, -(-(out_len - r) // stride))
        first = taps[0] if taps else 0
        phases.append((first, len(taps), count, (r + first - lo) // stride))
    live = [p for p in phases if p[1] and p[2]]
    pad_lo = max([0] + [-off for _, _, _, off in live])
    pad_hi = max([0] + [count + taps - 2 + off - (n - 1) for _, taps, count, off in live])
    return out_len, phases, pad_lo, pad_hi


def conv_transpose_phases(
    x: Array, kernel: Array, strides: tuple[int, int], padding: Sequence[tuple[int, int]]
) -> Array:
    """A strided transposed convolution as ``strides[0] * strides[1]`` stride-1 convolutions, one per output phase.

    Computes exactly ``lax.conv_transpose(x, kernel, strides, padding)`` (= ``conv_general_dilated`` of ``x`` dilated
    by the strides, no kernel flip; what ``flax.linen.ConvTranspose`` computes): the output at o = s·m + r only sees
    the taps j with (r + j − lo) ≡ 0 (mod s), i.e. the sub-kernel ``kernel[j0::s]`` slid over the *undilated* input.
    Same values and gradients without an input-dilated convolution, whose gradients XLA:CPU runs 5–7× slower than
    plain ones (CONV-VRNN's three strided layers at 200 frames; docs/vrnn.md, python -m benchmarks.vrnn_step).

    x: ``[N, H, W, C_in]``; kernel: ``[k_h, k_w, C_in, C_out]``; padding: explicit ``((lo, hi), (lo, hi))`` of the
    dilated input. Returns ``[N, H_out, W_out, C_out]``, H_out = (H − 1)·s + 1 + lo + hi − k_h + 1.
    """
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    oh, rows, lh, hh = _phase_plan(x.shape[1], sh, tuple(padding[0]), kh)
    ow, cols, lw, hw = _phase_plan(x.shape[2], sw, tuple(padding[1]), kw)
    xp = jnp.pad(x, ((0, 0), (lh, hh), (lw, hw), (0, 0)))
    mh, mw = -(-oh // sh), -(-ow // sw)
    out_shape = (x.shape[0], mh, mw, kernel.shape[-1])
    phase_rows = []
    for ja, na, ma, da in rows:
        phase_cols = []
        for jb, nb, mb, db in cols:
            if na and nb and ma and mb:
                sub = kernel[ja::sh, jb::sw][:na, :nb]
                window = xp[:, lh + da : lh + da + ma + na - 1, lw + db : lw + db + mb + nb - 1]
                y = jax.lax.conv_general_dilated(
                    window, sub, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
                )
                y = jnp.pad(y, ((0, 0), (0, mh - ma), (0, mw - mb), (0, 0)))
            else:  # a phase no tap reaches (stride > kernel) is zero
                y = jnp.zeros(out_shape, jnp.result_type(x, kernel))
            phase_cols.append(y)
        phase_rows.append(jnp.stack(phase_cols, axis=3))  # [N, m_h, m_w, s_w, C]
    y = jnp.stack(phase_rows, axis=2).reshape(x.shape[0], mh * sh, mw * sw, kernel.shape[-1])  # interleave phases
    return y[:, :oh, :ow]


class PhaseConvTranspose(nn.Module):
    """``flax.linen.ConvTranspose`` with explicit padding, computed by ``conv_transpose_phases``: the same parameters
    (``kernel [k_h, k_w, C_in, C_out]``, ``bias [C_out]``, the same initialisers) and outputs. Inputs
    ``[..., H, W, C_in]`` (any leading axes)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]
    kernel_init: Callable[..., Array] = nn.linear.default_kernel_init
    bias_init: Callable[..., Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _flax_conv_layer(self, x, lambda x, k: conv_transpose_phases(x, k, self.strides, self.padding))


@jax.custom_vjp
def matmul_materialised_cotangent(x: Array, w: Array) -> Array:
    """``x [..., K] @ w [K, N] -> [..., N]``, whose backward pass materialises the cotangent once and takes the
    weight gradient as one contraction over the leading axes: dx = g wᵀ, dw = Σ_rows x_rowᵀ g_row.

    The same values and gradients as ``x @ w``. What differs is what XLA may do with the cotangent g: left to
    itself, XLA:CPU fuses g's producer (for a convolution layer: the activation's derivative and the transpose of a
    subpixel shuffle) into each of its three consumers (dx, dw and the bias sum) and hands dw a transposed copy of g
    ``[N, rows]`` — CONV-SQAIR's decoder spent about as long on those copies as on its matrix products. An
    ``optimization_barrier`` on g stops the fusion, and the explicit contraction over axis 0 of both operands needs
    no transposed copy (CONV-SQAIR's train step at four frames: 3.05 → 2.58 s; ``benchmarks/sqair_decode.py``,
    docs/results.md).

    Call it on explicitly batched operands, not under ``vmap`` with an unbatched ``w``: JAX batches a custom backward
    pass as a whole, so there dw becomes one small product per example, stacked and then summed, where ``x @ w`` under
    ``vmap`` contracts over the examples in one product (SQAIR's glimpse encoder, vmapped over sequences and
    particles, was 12–16 % slower with it; ``conv_patches(..., materialise_cotangent=False)``).
    """
    return x @ w


def _matmul_fwd(x, w):
    return x @ w, (x, w)


def _matmul_bwd(residuals, g):
    x, w = residuals
    g = jax.lax.optimization_barrier(g)
    rows = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731
    return g @ w.T, jax.lax.dot_general(rows(x), rows(g), (((0,), (0,)), ((), ())))


matmul_materialised_cotangent.defvjp(_matmul_fwd, _matmul_bwd)


def conv_patches(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: str | Sequence[tuple[int, int]],
    materialise_cotangent: bool = True,
) -> Array:
    """A 2-D convolution as one matrix product over image patches (im2col): the same values as
    ``lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))``, up to float
    rounding, with only pads, strided slices and a dot — and so the same gradients.

    XLA:CPU runs a convolution (above all its gradient) that sits in a nested computation — a ``lax.scan`` or
    ``lax.cond`` body — on a slow path, 40–100× slower than the same convolution at the top level (jax-ml/jax#12868;
    measured here: the CONV-SQAIR decoder's 3×3 convolution gradient at 360 glimpses, 0.25 s at the top level against
    27.7 s inside a ``lax.cond``); dots run at the same speed in both places (0.25 s and 0.29 s). See
    ``PatchConv``. The dots are ``matmul_materialised_cotangent``, whose backward pass does not copy the cotangent,
    or with ``materialise_cotangent=False`` plain ``x @ w`` (for a convolution that runs under ``vmap``; see there).

    x: ``[N, H, W, C_in]``; kernel: ``[k_h, k_w, C_in, C_out]``; padding: ``"SAME"``, ``"VALID"`` or explicit
    ``((lo, hi), (lo, hi))``. Returns ``[N, H_out, W_out, C_out]``.
    """
    kh, kw, c_in, c_out = kernel.shape
    sh, sw = strides
    matmul = matmul_materialised_cotangent if materialise_cotangent else jnp.matmul
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    (lh, hh), (lw, hw) = padding
    xp = jnp.pad(x, ((0, 0), (lh, hh), (lw, hw), (0, 0)))
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1

    def tap(a, i, j):  # the window of tap (i, j) at every output position
        return a[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw]

    if c_out < c_in and sh == sw == 1:
        # Fewer outputs than inputs: multiply every padded pixel by all k_h·k_w taps at once, then add the shifted
        # products (k_h·k_w·C_out channels held, not the k_h·k_w·C_in of the patches: a decoder's 1-channel output
        # layer).
        products = matmul(xp, jnp.moveaxis(kernel, 2, 0).reshape(c_in, kh * kw * c_out)).reshape(
            xp.shape[:3] + (kh * kw, c_out)
        )
        return sum(tap(products[..., i * kw + j, :], i, j) for i in range(kh) for j in range(kw))
    patches = [tap(xp, i, j) for i in range(kh) for j in range(kw)]
    return matmul(jnp.concatenate(patches, axis=-1), kernel.reshape(kh * kw * c_in, c_out))


class PatchConv(nn.Module):
    """``flax.linen.Conv`` (2-D, no dilation or groups) with the same parameters (``kernel [k_h, k_w, C_in, C_out]``,
    ``bias [C_out]``, the same initialisers) and outputs, computed by ``conv_patches`` where ``implementation`` says
    so: ``"patches"``, ``"xla"`` (``lax.conv_general_dilated``, as flax) or ``"auto"`` — patches on the CPU backend,
    where XLA runs convolutions inside loop and conditional bodies slowly, XLA's convolution elsewhere. Inputs
    ``[..., H, W, C_in]`` (any leading axes). ``materialise_cotangent``: see ``conv_patches`` (off for a layer that
    runs under ``vmap``)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME"
    implementation: str = "auto"
    materialise_cotangent: bool = True
    kernel_init: Callable[..., Array] = nn.linear.default_kernel_init
    bias_init: Callable[..., Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array) -> Array:
        implementation = self.implementation
        if implementation == "auto":
            implementation = "patches" if jax.default_backend() == "cpu" else "xla"
        if implementation == "patches":
            convolve = lambda x, k: conv_patches(  # noqa: E731
                x, k, self.strides, self.padding, materialise_cotangent=self.materialise_cotangent
            )
        elif implementation == "xla":
            convolve = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
                x, k, self.strides, self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            raise ValueError(f"implementation must be 'auto', 'patches' or 'xla'; got {implementation!r}")
        return _flax_conv_layer(self, x, convolve)


def _flax_conv_layer(module: nn.Module, x: Array, convolve: Callable[[Array, Array], Array]) -> Array:
    """The body of a flax-compatible convolution layer (``PhaseConvTranspose``, ``PatchConv``), called from its compact
    ``__call__``: flax's ``kernel [k_h, k_w, C_in, C_out]`` and ``bias [C_out]`` parameters, ``convolve`` on the input
    flattened to ``[N, H, W, C_in]``, the leading axes restored and the bias added."""
    kernel = module.param("kernel", module.kernel_init, (*module.kernel_size, x.shape[-1], module.features))
    bias = module.param("bias", module.bias_init, (module.features,))
    lead = x.shape[:-3]
    y = convolve(x.reshape((-1,) + x.shape[-3:]), kernel)
    return y.reshape(lead + y.shape[1:]) + bias


class ConvStack(nn.Module):
    """Strided 3x3 convolutions ("SAME" padding) with ``activation`` (ReLU by default) on ``[..., H, W]``
    single-channel inputs, flattened at the end."""

    channels: Sequence[int] = (16, 32)
    strides: Sequence[int] = (2, 2)
    activation: Callable[[Array], Array] = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        lead = x.shape[:-2]
        y = x.reshape((-1,) + x.shape[-2:] + (1,))
        for i, (c, s) in enumerate(zip(self.channels, self.strides, strict=True)):
            y = self.activation(nn.Conv(c, (3, 3), strides=(s, s), padding="SAME", name=f"conv_{i}")(y))
        return y.reshape(lead + (-1,))


class ImageEncoder(nn.Module):
    """The image encoding that enters the controller (computed once per image): ``[..., H, W] -> [..., E]``.

    kind: ``"raw"`` (flattened pixels, as in the Pyro example), ``"mlp"`` (MLP with ``hidden`` units, ReLU after
    every layer) or ``"conv"`` (strided convolutions then a Dense layer of ``hidden[-1]`` units).
    """

    kind: str = "raw"
    hidden: Sequence[int] = (256,)
    conv_channels: Sequence[int] = (16, 32)

    @nn.compact
    def __call__(self, images: Array) -> Array:
        flat = images.reshape(images.shape[:-2] + (-1,))
        if self.kind == "raw":
            return flat
        if self.kind == "mlp":
            return MLP(tuple(self.hidden), activate_final=True, name="mlp")(flat)
        if self.kind == "conv":
            h = ConvStack(tuple(self.conv_channels), (2,) * len(self.conv_channels), name="conv")(images)
            return nn.relu(nn.Dense(self.hidden[-1], name="proj")(h))
        raise ValueError(f"unknown image encoder kind {self.kind!r}; expected 'raw', 'mlp' or 'conv'")


class GlimpseEncoder(nn.Module):
    """``glimpse [..., h, w] -> (loc, scale)`` of q(z_what | glimpse), each ``[..., latent_dim]``.

    kind ``"mlp"``: MLP over the flattened glimpse; ``"conv"``: strided convolutions, then a hidden Dense layer.
    """

    latent_dim: int
    kind: str = "mlp"
    hidden: Sequence[int] = (256,)
    conv_channels: Sequence[int] = (16, 32)

    @nn.compact
    def __call__(self, glimpse: Array) -> tuple[Array, Array]:
        if self.kind == "mlp":
            h = MLP(tuple(self.hidden), activate_final=True, name="mlp")(glimpse.reshape(glimpse.shape[:-2] + (-1,)))
        elif self.kind == "conv":
            h = ConvStack(tuple(self.conv_channels), (2,) * len(self.conv_channels), name="conv")(glimpse)
            h = MLP(tuple(self.hidden), activate_final=True, name="mlp")(h)
        else:
            raise ValueError(f"unknown glimpse encoder kind {self.kind!r}; expected 'mlp' or 'conv'")
        return GaussianHead(self.latent_dim, name="what")(h)


class GlimpseDecoder(nn.Module):
    """``z_what [..., D] -> glimpse logits [..., h, w]`` (apply a sigmoid for intensities).

    kind ``"mlp"``: MLP with ``hidden`` units then a Dense layer to h*w logits. ``"conv"``: Dense to a
    ``[h / 2^U, w / 2^U, C]`` map, then U subpixel upsampling stages (3x3 conv to ``c * 4`` channels + depth-to-space
    + ReLU, with ``c`` from ``conv_channels``), then a 3x3 conv to one channel. ``output_bias`` initialises the
    final bias (negative, e.g. -2, so the canvas starts nearly empty; spec AIR.md).
    """

    glimpse_shape: tuple[int, int]
    kind: str = "mlp"
    hidden: Sequence[int] = (256,)
    conv_channels: Sequence[int] = (32, 16)
    output_bias: float = -2.0

    @nn.compact
    def __call__(self, z_what: Array) -> Array:
        h, w = self.glimpse_shape
        out_binit = nn.initializers.constant(self.output_bias)
        if self.kind == "mlp":
            x = MLP(tuple(self.hidden), activate_final=True, name="mlp")(z_what)
            x = nn.Dense(h * w, bias_init=out_binit, name="out")(x)
            return x.reshape(z_what.shape[:-1] + (h, w))
        if self.kind == "conv":
            ups = len(self.conv_channels)
            f = 2**ups
            if h % f or w % f:
                raise ValueError(
                    f"conv glimpse decoder with {ups} subpixel stages needs glimpse dims divisible by {f}; "
                    f"got glimpse_shape {self.glimpse_shape}"
                )
            lead = z_what.shape[:-1]
            x = MLP(tuple(self.hidden), activate_final=True, name="mlp")(z_what)
            c0 = self.conv_channels[0]
            x = nn.relu(nn.Dense((h // f) * (w // f) * c0, name="proj")(x))
            x = x.reshape((-1, h // f, w // f, c0))
            for i, c in enumerate(self.conv_channels):
                x = nn.Conv(c * 4, (3, 3), padding="SAME", name=f"subpixel_{i}")(x)
                x = nn.relu(depth_to_space(x, 2))
            x = nn.Conv(1, (3, 3), padding="SAME", bias_init=out_binit, name="out")(x)
            return x.reshape(lead + (h, w))
        raise ValueError(f"unknown glimpse decoder kind {self.kind!r}; expected 'mlp' or 'conv'")


def make_rnn_cell(kind: str, features: int, name: str | None = None) -> nn.Module:
    """``"lstm"`` -> ``nn.LSTMCell``, ``"gru"`` -> ``nn.GRUCell``, ``"vanilla"`` -> ``nn.SimpleCell`` (tanh)."""
    if kind == "lstm":
        return nn.LSTMCell(features, name=name)
    if kind == "gru":
        return nn.GRUCell(features, name=name)
    if kind == "vanilla":
        return nn.SimpleCell(features, name=name)
    raise ValueError(f"unknown rnn kind {kind!r}; expected one of {RNN_KINDS}")


class HoistedInputRNNCell(nn.Module):
    """An LSTM / GRU / vanilla (tanh) cell whose input is split into a *static* part, projected once, and a
    per-step part.

    Every gate pre-activation of these cells is affine in the input, ``W [s; x] = W_s s + W_x x``, so the static
    input's contribution ``W_s s`` (e.g. the encoding of the whole image in AIR's controller) can be computed once per
    image with :meth:`project` and reused at every step and for every particle. The cell is then the same function
    as the standard cell fed ``[s; x]`` at every step (the LSTM/GRU/tanh-RNN equations of flax.linen), at a cost per
    step that no longer depends on the size of ``s`` (2,500 raw pixels for a 50×50 canvas).

    Carry: ``(c, h)`` for LSTM, ``h`` otherwise (as :func:`rnn_zero_state`).
    """

    kind: str
    features: int

    def _num_gates(self) -> int:
        return {"lstm": 4, "gru": 3, "vanilla": 1}[self.kind]

    @nn.compact
    def project(self, static_inputs: Array) -> Array:
        """``[..., S] -> [..., gates * features]``: the static input's share of every gate (with the gate biases)."""
        if self.kind not in RNN_KINDS:
            raise ValueError(f"unknown rnn kind {self.kind!r}; expected one of {RNN_KINDS}")
        return nn.Dense(self._num_gates() * self.features, name="static")(static_inputs)

    @nn.compact
    def __call__(self, carry: Any, projected: Array, step_inputs: Array) -> tuple[Any, Array]:
        """One step: ``(carry, projected [..., G*F] from :meth:`project`, step_inputs [..., X]) -> (carry, h)``."""
        f = self.features
        x = projected + nn.Dense(self._num_gates() * f, use_bias=False, name="step")(step_inputs)
        if self.kind == "lstm":
            c, h = carry
            i, g, fg, o = jnp.split(x + nn.Dense(4 * f, use_bias=False, name="hidden")(h), 4, axis=-1)
            c = nn.sigmoid(fg) * c + nn.sigmoid(i) * jnp.tanh(g)
            h = nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h
        if self.kind == "gru":
            h = carry
            xr, xz, xn = jnp.split(x, 3, axis=-1)
            hr, hz, hn = jnp.split(nn.Dense(3 * f, name="hidden")(h), 3, axis=-1)
            r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return h, h
        h = jnp.tanh(x + nn.Dense(f, use_bias=False, name="hidden")(carry))
        return h, h


def rnn_zero_state(kind: str, features: int, batch_shape: tuple[int, ...] = (), dtype=jnp.float32) -> Any:
    """Zero carry of ``make_rnn_cell(kind, features)``: ``(c, h)`` for LSTM, ``h`` otherwise."""
    z = jnp.zeros(batch_shape + (features,), dtype)
    if kind == "lstm":
        return (z, z)
    if kind in RNN_KINDS:
        return z
    raise ValueError(f"unknown rnn kind {kind!r}; expected one of {RNN_KINDS}")


def rnn_output(kind: str, carry: Any) -> Array:
    """The hidden state ``h`` of a carry."""
    return carry[1] if kind == "lstm" else carry
