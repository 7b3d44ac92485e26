r"""XLA:CPU's convolution inside a ``lax.cond`` body against the same convolution as patch matrix products
(``ocr_jax.models.modules.conv_patches``), at the top level and inside the conditional (not a test).

  python benchmarks/conv_in_cond.py [--batch=360] [--repeats=5]

The layer is CONV-SQAIR's largest decoder convolution (3×3, 64 → 256 channels on 10×10 maps, SAME padding); timed is
the gradient of a scalar of its output with respect to the kernel and the input, compiled, the best of ``repeats``
calls (XLA's convolution inside the conditional takes ≈ 28 s per call on a 2-core CPU). Run it alone: a second busy
process distorts two-thread timings.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.append(REPO)

from ocr_jax.models.modules import conv_patches  # noqa: E402


def xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def patch_conv(x, kernel):
    return conv_patches(x, kernel, (1, 1), "SAME")


def seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def main(argv):
    del argv
    x = jax.random.normal(jax.random.key(0), (_BATCH.value, 10, 10, 64))
    kernel = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, 64, 256))
    print(f"load average {os.getloadavg()[0]:.2f}; batch {_BATCH.value}; seconds per gradient")
    for name, conv in (("xla", xla_conv), ("patches", patch_conv)):
        loss = lambda k, x, conv=conv: jnp.sum(jnp.tanh(conv(x, k)) ** 2)  # noqa: E731
        top = jax.jit(jax.grad(loss, argnums=(0, 1)))
        in_cond = jax.jit(
            jax.grad(lambda k, x: jax.lax.cond(jnp.sum(x) > -1e30, loss, lambda k, x: 0.0, k, x), argnums=(0, 1))
        )
        print(
            f"{name:8s} top level {seconds(top, kernel, x, repeats=_REPEATS.value):.3f}  "
            f"inside lax.cond {seconds(in_cond, kernel, x, repeats=_REPEATS.value):.3f}",
            flush=True,
        )


if __name__ == "__main__":
    _BATCH = flags.DEFINE_integer("batch", 360, "glimpses")
    _REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls; the best is reported")
    app.run(main)
