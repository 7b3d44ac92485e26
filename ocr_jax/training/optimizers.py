"""Optax optimisers and learning-rate schedules from a config, one per parameter group.

Config of one group (all fields but `optimizer` and `learning_rate` optional)::

    ConfigDict(dict(
        optimizer="rmsprop",          # "rmsprop" | "adam" | "sgd"
        learning_rate=1e-4,           # peak/initial value of the schedule
        schedule="constant",          # "constant" | "piecewise_constant" | "exponential"
        boundaries_and_scales={},     # piecewise_constant: {step: multiplier}, cumulative, as optax
        decay_steps=1000, decay_rate=0.5, staircase=False,  # exponential: lr * rate ** (step / decay_steps)
        clip_global_norm=None,        # clip this group's gradient to this global norm before the optimiser
        # rmsprop (defaults = TensorFlow 1 tf.train.RMSPropOptimizer, which AIR/SQAIR used):
        decay=0.9, eps=1e-10, momentum=0.9, centered=False, initial_scale=1.0,
        # adam: b1=0.9, b2=0.999, adam_eps=1e-8
    ))

RMSProp semantics. TF1's RMSProp (as used by the AIR and SQAIR reference code) is::

    ms  <- decay * ms + (1 - decay) * g**2          # ms initialised to ONES
    mom <- momentum * mom + lr * g / sqrt(ms + eps) # eps inside the square root, default 1e-10
    var <- var - mom

``optax.rmsprop(lr, decay, eps, initial_scale=1.0, eps_in_sqrt=True, momentum=momentum)`` is exactly this: it
chains `scale_by_rms` (eps inside the sqrt when ``eps_in_sqrt=True``; ``initial_scale`` is the initial ms),
`scale_by_learning_rate` and `trace(momentum)`, so momentum accumulates the already learning-rate-scaled update, as
in TF1 (tested in tests/training/test_training.py). Note optax's own defaults differ (eps=1e-8, initial_scale=0).
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict) -> optax.Schedule:
    lr = float(cfg.learning_rate)
    name = cfg.get("schedule", "constant")
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "piecewise_constant":
        b_and_s = {int(k): float(v) for k, v in dict(cfg.get("boundaries_and_scales", {})).items()}
        return optax.piecewise_constant_schedule(lr, b_and_s)
    if name == "exponential":
        return optax.exponential_decay(
            lr,
            transition_steps=int(cfg.decay_steps),
            decay_rate=float(cfg.decay_rate),
            staircase=bool(cfg.get("staircase", False)),
        )
    raise ValueError(f"unknown schedule {name!r}; expected constant, piecewise_constant or exponential")


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """One group's optimiser: optional global-norm clipping, then the optimiser with its schedule."""
    schedule = make_schedule(cfg)
    name = cfg.optimizer
    if name == "rmsprop":
        momentum = cfg.get("momentum", 0.9)
        opt = optax.rmsprop(
            schedule,
            decay=cfg.get("decay", 0.9),
            eps=cfg.get("eps", 1e-10),
            initial_scale=cfg.get("initial_scale", 1.0),
            eps_in_sqrt=True,
            centered=cfg.get("centered", False),
            momentum=momentum or None,
        )
    elif name == "adam":
        opt = optax.adam(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999), eps=cfg.get("adam_eps", 1e-8))
    elif name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.get("momentum", None) or None)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected rmsprop, adam or sgd")
    clip = cfg.get("clip_global_norm", None)
    if clip:
        opt = optax.chain(optax.clip_by_global_norm(float(clip)), opt)
    return opt


def make_optimizers(
    cfgs: Mapping[str, ml_collections.ConfigDict],
) -> tuple[dict[str, optax.GradientTransformation], dict[str, optax.Schedule]]:
    """Per-group optimisers and their schedules (the schedules are logged as ``lr/<group>``)."""
    optimizers = {g: make_optimizer(c) for g, c in cfgs.items()}
    schedules = {g: make_schedule(c) for g, c in cfgs.items()}
    return optimizers, schedules
