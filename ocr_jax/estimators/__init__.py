"""One interface for every gradient estimator, in the optax manner.

A model exposes the per-particle terms of its log-weights in one typed structure, :class:`LogWeightTerms`; an
:class:`Estimator` is a small value of pure functions looked up by name::

    estimator = estimators.get("vimco")            # or get("nvil", decay=0.9), get("miwae", num_repeats=8), ...
    state = estimator.init(num_steps)               # e.g. NVIL's running statistics; () for stateless estimators
    surrogates, state = estimator.surrogates(terms, state)
    losses = estimators.losses_by_group(surrogates)  # {"generative": ..., "inference": ..., "baseline": ...}

``jax.grad`` of ``losses["generative"]`` w.r.t. θ and of ``losses["inference"]`` w.r.t. φ are the estimator's
gradient estimates (see :mod:`ocr_jax.objectives`, whose functions compute the surrogates; thesis chapters 7–8).
Every estimator states which optional terms it needs (``Estimator.requires``) and how many particles
(``Estimator.min_particles``); a missing term or too few particles is a ``ValueError`` naming the estimator and the
term, raised at trace time.

Registered names: ``elbo``, ``iwae``, ``miwae`` (num_repeats, score_baseline), ``ciwae`` (beta, score_baseline),
``piwae`` (num_repeats, score_baseline; ``score_baseline="leave_one_out"`` scores each particle or repeat against
the others, so a poor particle is punished by what it loses, unlike VIMCO's IWAE signal: docs/results.md, #15),
``reinforce``, ``nvil`` (decay), ``vimco``, ``ws``, ``ww``, ``dww`` (δ-WW), ``dreg``, ``switch`` (first, then, steps,
first_args, then_args: one estimator for the first training steps, another afterwards), and ``fivo`` (resampling,
ess_threshold): the filtering variational objective (Maddison et al. 2017), whose terms come from a particle filter
that the model's task runs (:mod:`ocr_jax.estimators.fivo`). A new estimator is one function decorated with
:func:`register`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ocr_jax import objectives
from ocr_jax.estimators import fivo as fivo_lib
from ocr_jax.objectives import Surrogates

Array = jax.Array
sg = jax.lax.stop_gradient

__all__ = [
    "Estimator",
    "LogWeightTerms",
    "Surrogates",
    "check_applicable",
    "get",
    "losses_by_group",
    "names",
    "register",
]


class LogWeightTerms(NamedTuple):
    """Per-particle terms of one model's log-weights log w_k = log p(x, z_k) − log q(z_k | x) (thesis Eq. 8.1).

    Axes: ``[..., particles]`` (``...`` e.g. ``batch``, averaged by every estimator); per-step fields
    ``[..., particles, steps]``. Only ``log_p`` is always needed; the rest are ``None`` unless the model has them:

    * ``log_p``: log p_θ(x, z_k), with the sample path of reparameterised latents differentiable;
    * ``log_q_reparam``: log q_φ of the reparameterised latents (sample path and density differentiable);
    * ``log_q_score``: log q_φ of the score-function (e.g. discrete) latents at samples that carry no gradient;
    * ``log_w_steps`` / ``log_q_score_steps``: per-step log p − log q and per-step log q of that step's
      score-function latent, in step order (NVIL's per-step learning signals, ``objectives.nvil_per_step``);
    * ``log_likelihood``: log p(x | z) when it is not folded into ``log_w_steps`` (downstream of every step);
    * ``baselines``: NVIL's input-dependent baseline b_ψ: ``[...]`` for whole-particle-set signals, or
      ``[..., particles, steps]`` with ``log_w_steps`` (a function of x and z^{<i} only);
    * ``log_proposal``: log density of the distribution the score-function latents were drawn from, when it is
      not q (δ-WW's defensive mixture);
    * ``log_q_sleep``: ``[...]`` log q_φ(z | x) at (z, x) ~ p_θ (wake-sleep's sleep phase);
    * ``log_q_stopped``: log q with φ stopped in the density's parameters but not in the sample path (DReG);
    * ``log_p_hat``: ``[...]`` a resampling particle filter's log p̂(x_{1:T}) (FIVO; :mod:`ocr_jax.estimators.fivo`).
      Then ``log_p`` holds the filter's final per-particle log-weights (``FilterResult.log_weights``, whose log-mean-exp
      is ``log_p_hat``) and only ``fivo`` accepts the terms: once resampled, the particles are not independent
      importance samples, so the IWAE family's and VIMCO's per-particle signals do not apply to them.
    """

    log_p: Array
    log_q_reparam: Array | None = None
    log_q_score: Array | None = None
    log_w_steps: Array | None = None
    log_q_score_steps: Array | None = None
    log_likelihood: Array | None = None
    baselines: Array | None = None
    log_proposal: Array | None = None
    log_q_sleep: Array | None = None
    log_q_stopped: Array | None = None
    log_p_hat: Array | None = None

    @property
    def num_particles(self) -> int:
        return int(jnp.shape(self.log_p)[-1])


class Estimator(NamedTuple):
    """A gradient estimator: ``init(num_steps) -> state`` and ``surrogates(terms, state) -> (Surrogates, state)``.

    ``requires``: the optional :class:`LogWeightTerms` fields it reads; ``min_particles``: the smallest K;
    ``trains_baseline``: whether ``Surrogates.baseline`` is a loss for a learned baseline's parameters;
    ``particle_filter``: for estimators whose terms come from a particle filter (``fivo``), the
    :class:`~ocr_jax.estimators.fivo.FilterSettings` the model's task runs it with; ``None`` for the others (a task
    that computes its log-weights with a filter runs it with ``resampling="never"`` for them: independent particles).
    """

    name: str
    init: Callable[..., Any]
    surrogates: Callable[[LogWeightTerms, Any], tuple[Surrogates, Any]]
    requires: tuple[str, ...] = ()
    min_particles: int = 1
    trains_baseline: bool = False
    particle_filter: fivo_lib.FilterSettings | None = None


_FACTORIES: dict[str, Callable[..., Estimator]] = {}


def register(name: str):
    """Decorator: ``@register("name")`` on a factory ``(**hyperparameters) -> Estimator``."""

    def wrap(factory):
        _FACTORIES[name] = factory
        return factory

    return wrap


def names() -> tuple[str, ...]:
    return tuple(sorted(_FACTORIES))


def get(name: str, **hyperparameters) -> Estimator:
    """The estimator registered as ``name`` with its hyperparameters (unknown names and arguments raise)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown estimator {name!r}; registered: {', '.join(names())}")
    factory = _FACTORIES[name]
    accepted = set(inspect.signature(factory).parameters)
    unknown = set(hyperparameters) - accepted
    if unknown:
        raise ValueError(f"estimator {name!r} takes {sorted(accepted) or 'no hyperparameters'}; got {sorted(unknown)}")
    return factory(**hyperparameters)


def losses_by_group(surrogates: Surrogates) -> dict[str, Array]:
    """The conventional parameter groups: θ ``generative``, φ ``inference``, b_ψ ``baseline``."""
    return {
        "generative": surrogates.theta,
        "inference": surrogates.phi,
        "baseline": jnp.asarray(surrogates.baseline, jnp.float32),
    }


def check_applicable(estimator: Estimator, provided: frozenset[str], num_particles: int, model: str) -> None:
    """A clear error at configuration time when ``estimator`` needs terms the model lacks or more particles."""
    missing = sorted(set(estimator.requires) - provided)
    if missing:
        combined = (
            " (FIVO cannot be combined with VIMCO or another score-function estimator)"
            if ("log_p_hat" in provided and "log_q_score" in missing)
            else ""
        )
        raise ValueError(
            f"estimator {estimator.name!r} needs {', '.join(missing)}, which {model} does not provide "
            f"(it provides {', '.join(sorted(provided))}){combined}"
        )
    if estimator.particle_filter is not None:
        s = estimator.particle_filter
        fivo_lib.check_settings(s.resampling, s.ess_threshold, num_particles)
    if num_particles < estimator.min_particles:
        raise ValueError(
            f"estimator {estimator.name!r} needs num_particles >= {estimator.min_particles}; got {num_particles}"
        )


# ------------------------------------------------------------------------------------------------------------------
# helpers


def _check(name: str, terms: LogWeightTerms, requires: tuple[str, ...], min_particles: int) -> None:
    if not isinstance(terms, LogWeightTerms):
        raise TypeError(f"estimator {name!r} takes LogWeightTerms; got {type(terms).__name__}")
    if terms.log_p_hat is not None and name != "fivo":
        raise ValueError(
            f"estimator {name!r} cannot be combined with FIVO: these terms come from a resampling particle filter "
            "(LogWeightTerms.log_p_hat is set), whose particles share ancestors and are not independent importance "
            f"samples; train with 'fivo', or run the filter with resampling='never' for {name!r}"
        )
    missing = [field for field in requires if getattr(terms, field) is None]
    if missing:
        raise ValueError(
            f"estimator {name!r} needs LogWeightTerms.{', .'.join(missing)}, which this model did not provide"
        )
    if terms.num_particles < min_particles:
        raise ValueError(
            f"estimator {name!r} needs at least {min_particles} particles (K >= {min_particles}); got "
            f"log_p of shape {tuple(jnp.shape(terms.log_p))}"
        )


def _stateless(
    name: str, fn: Callable[[LogWeightTerms], Surrogates], requires=(), min_particles=1, forbids=()
) -> Estimator:
    def surrogates(terms, state):
        _check(name, terms, requires, min_particles)
        present = [field for field in forbids if getattr(terms, field) is not None]
        if present:
            raise ValueError(f"estimator {name!r} does not apply to models with {', '.join(present)}")
        return fn(terms), state

    return Estimator(
        name=name,
        init=lambda num_steps=None: (),
        surrogates=surrogates,
        requires=tuple(requires),
        min_particles=min_particles,
    )


def _total_q(terms: LogWeightTerms, score: Array | None) -> Array | None:
    parts = [a for a in (terms.log_q_reparam, score) if a is not None]
    return None if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]


# ------------------------------------------------------------------------------------------------------------------
# the IWAE family and score-function estimators (thesis chapter 7, Eq. 8.2–8.3)


@register("elbo")
def elbo() -> Estimator:
    return _stateless("elbo", lambda t: objectives.elbo(t.log_p, t.log_q_reparam, t.log_q_score))


@register("iwae")
def iwae() -> Estimator:
    return _stateless("iwae", lambda t: objectives.iwae(t.log_p, t.log_q_reparam, t.log_q_score))


@register("miwae")
def miwae(num_repeats: int = 1, score_baseline: str = "none") -> Estimator:
    return _stateless(
        "miwae",
        lambda t: objectives.miwae(
            t.log_p, t.log_q_reparam, t.log_q_score, num_repeats=num_repeats, score_baseline=score_baseline
        ),
    )


@register("ciwae")
def ciwae(beta: float = 0.5, score_baseline: str = "none") -> Estimator:
    """CIWAE(β) (thesis Eq. 7.13) for θ and φ; ``score_baseline="leave_one_out"``: VIMCO's baseline for the IWAE
    part's score-function signal and the leave-one-out mean for the ELBO part's (``objectives.ciwae``)."""
    return _stateless(
        "ciwae",
        lambda t: objectives.ciwae(t.log_p, t.log_q_reparam, t.log_q_score, beta=beta, score_baseline=score_baseline),
    )


@register("piwae")
def piwae(num_repeats: int = 1, score_baseline: str = "none") -> Estimator:
    """θ: IWAE(K); φ: MIWAE(M = num_repeats, K / M). ``score_baseline="leave_one_out"`` scores each repeat against
    the mean of the others (``objectives.miwae``); with num_repeats = K the inference network follows the K-sample
    ELBO with a leave-one-out baseline while the model follows IWAE (``air_multi_mnist:piwae``)."""
    return _stateless(
        "piwae",
        lambda t: objectives.piwae(
            t.log_p, t.log_q_reparam, t.log_q_score, num_repeats=num_repeats, score_baseline=score_baseline
        ),
    )


@register("reinforce")
def reinforce() -> Estimator:
    return _stateless(
        "reinforce", lambda t: objectives.reinforce(t.log_p, t.log_q_reparam, t.log_q_score), requires=("log_q_score",)
    )


@register("vimco")
def vimco() -> Estimator:
    return _stateless(
        "vimco",
        lambda t: objectives.vimco(t.log_p, t.log_q_reparam, t.log_q_score),
        requires=("log_q_score",),
        min_particles=2,
    )


@register("nvil")
def nvil(decay: float = 0.9) -> Estimator:
    """NVIL (Mnih & Gregor 2014). With ``log_w_steps`` given: per-step signals (``objectives.nvil_per_step``,
    the ELBO; ``init(num_steps)``); otherwise one signal log Ẑ_K − c − b_ψ(x) for the whole particle set
    (``objectives.nvil``, IWAE_K; ``init()``)."""

    def init(num_steps: int | None = None):
        return objectives.nvil_init(() if num_steps is None else (num_steps,))

    def surrogates(t: LogWeightTerms, state):
        _check("nvil", t, ("log_q_score", "baselines"), 1)
        if t.log_w_steps is not None:
            _check("nvil", t, ("log_q_score_steps",), 1)
            return objectives.nvil_per_step(
                t.log_w_steps, t.log_q_score_steps, t.baselines, state, log_likelihood=t.log_likelihood, decay=decay
            )
        return objectives.nvil(t.log_p, t.log_q_reparam, t.log_q_score, t.baselines, state, decay=decay)

    return Estimator(
        name="nvil", init=init, surrogates=surrogates, requires=("log_q_score", "baselines"), trains_baseline=True
    )


# ------------------------------------------------------------------------------------------------------------------
# reweighted wake-sleep (thesis §8.3) and DReG


def _wake_wake(name: str, requires: tuple[str, ...]) -> Estimator:
    """θ: wake-θ (IWAE's θ-gradient, proposal stopped). φ: wake-φ (Eq. 8.7, self-normalised weights) for the
    score-function latents, and IWAE's reparameterised gradient for the reparameterised ones (wake-φ treats samples
    as data; where a reparameterisation exists its path gradient has far lower variance, thesis §8.4.2)."""

    def fn(t: LogWeightTerms) -> Surrogates:
        if t.log_q_reparam is None:
            return objectives.rws(t.log_p, t.log_q_score, t.log_proposal)
        proposal = t.log_q_score if t.log_proposal is None else t.log_proposal
        theta = objectives.rws_wake_theta(t.log_p, _total_q(t, t.log_q_score), _total_q(t, proposal))
        reparam = objectives.iwae(t.log_p, t.log_q_reparam, None if t.log_q_score is None else sg(t.log_q_score))
        phi = reparam.phi
        if t.log_q_score is not None:
            phi = phi + objectives.rws_wake_phi(sg(t.log_p - t.log_q_reparam), t.log_q_score, t.log_proposal)
        return Surrogates(theta=theta, phi=phi, bound=reparam.bound)

    return _stateless(name, fn, requires=requires)


@register("ww")
def ww() -> Estimator:
    return _wake_wake("ww", ())


@register("dww")
def dww() -> Estimator:
    """δ-WW: wake-wake with particles drawn from a defensive proposal (``log_proposal``, thesis §8.4.3)."""
    return _wake_wake("dww", ("log_proposal",))


@register("ws")
def ws() -> Estimator:
    """Wake-sleep: wake-θ and sleep-φ on model samples (``log_q_sleep``, Eq. 8.5)."""

    def fn(t: LogWeightTerms) -> Surrogates:
        log_q = _total_q(t, t.log_q_score)
        theta = objectives.rws_wake_theta(t.log_p, log_q)
        log_w = objectives.log_weights(t.log_p, None if log_q is None else sg(log_q))
        return Surrogates(
            theta=theta, phi=objectives.rws_sleep_phi(t.log_q_sleep), bound=sg(jnp.mean(objectives.log_mean_exp(log_w)))
        )

    return _stateless("ws", fn, requires=("log_q_sleep",))


@register("dreg")
def dreg() -> Estimator:
    """DReG (Tucker et al. 2019) for models whose latents are all reparameterised."""
    return _stateless(
        "dreg",
        lambda t: objectives.dreg(t.log_p, t.log_q_reparam, t.log_q_stopped),
        requires=("log_q_reparam", "log_q_stopped"),
        forbids=("log_q_score",),
    )


# ------------------------------------------------------------------------------------------------------------------
# one estimator for the first training steps, another afterwards


@register("switch")
def switch(
    first: str = "vimco",
    then: str = "piwae",
    steps: int = 1000,
    first_args: dict | None = None,
    then_args: dict | None = None,
) -> Estimator:
    """``first`` (with ``first_args``) for the first ``steps`` calls of ``surrogates`` — one per training step — and
    ``then`` (with ``then_args``) afterwards, e.g. VIMCO's IWAE signal while an AIR model finds its count, then the
    ELBO-trained inference network of ``piwae`` (docs/results.md, issue #15). Both estimators' surrogates are
    computed at every step (their own states advance together) and each group's loss is the active one's, so the
    gradient is exactly that estimator's. State: ``(calls so far, first's state, then's state)``."""
    if steps < 0:
        raise ValueError(f"estimator 'switch' needs steps >= 0; got {steps}")
    a, b = get(first, **dict(first_args or {})), get(then, **dict(then_args or {}))
    if a.particle_filter is not None or b.particle_filter is not None:
        raise ValueError("estimator 'switch' cannot switch to or from 'fivo' (its terms come from a particle filter)")
    requires = tuple(dict.fromkeys(a.requires + b.requires))
    min_particles = max(a.min_particles, b.min_particles)

    def init(num_steps: int | None = None):
        return (jnp.zeros((), jnp.int32), a.init(num_steps), b.init(num_steps))

    def surrogates(t: LogWeightTerms, state):
        _check("switch", t, requires, min_particles)
        calls, state_a, state_b = state
        s_a, state_a = a.surrogates(t, state_a)
        s_b, state_b = b.surrogates(t, state_b)
        use_first = calls < steps

        def pick(x, y):
            return jnp.where(use_first, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))

        same_aux = jax.tree.structure(s_a.aux) == jax.tree.structure(s_b.aux)
        s = Surrogates(
            theta=pick(s_a.theta, s_b.theta),
            phi=pick(s_a.phi, s_b.phi),
            bound=pick(s_a.bound, s_b.bound),
            baseline=pick(s_a.baseline, s_b.baseline),
            aux=jax.tree.map(pick, s_a.aux, s_b.aux) if same_aux else {**s_a.aux, **s_b.aux},
        )
        return s, (calls + 1, state_a, state_b)

    return Estimator(
        name="switch",
        init=init,
        surrogates=surrogates,
        requires=requires,
        min_particles=min_particles,
        trains_baseline=a.trains_baseline or b.trains_baseline,
    )


# ------------------------------------------------------------------------------------------------------------------
# FIVO (Maddison et al. 2017): the particle filter's bound


@register("fivo")
def fivo_estimator(resampling: str = "ess", ess_threshold: float = 0.5) -> Estimator:
    """FIVO: θ and φ both ascend log p̂ of a particle filter (``LogWeightTerms.log_p_hat``), with reparameterised
    gradients through the proposals and the resampling step's score term dropped, as in the FIVO paper
    (:mod:`ocr_jax.estimators.fivo`). ``resampling`` (``"always"``, ``"never"``, ``"ess"``) and ``ess_threshold``
    are the filter's settings, which the model's task reads from ``Estimator.particle_filter``; with
    ``resampling="never"`` the bound is IWAE over whole sequences. Score-function terms (``log_q_score``: VIMCO,
    NVIL, REINFORCE) cannot be combined with it: a clear error."""
    settings = fivo_lib.FilterSettings(resampling, float(ess_threshold))
    fivo_lib.check_settings(resampling, ess_threshold, 2 if resampling != "never" else 1)

    def surrogates(t: LogWeightTerms, state):
        _check("fivo", t, ("log_p_hat",), 1)
        if t.log_q_score is not None:
            raise ValueError(
                "estimator 'fivo' cannot be combined with score-function terms (LogWeightTerms.log_q_score: VIMCO, "
                "NVIL, REINFORCE): resampling makes the particles dependent, and VIMCO's leave-one-out signals need "
                "independent ones; relax the discrete latents (e.g. Concrete) to train them with FIVO"
            )
        if tuple(jnp.shape(t.log_p_hat)) != tuple(jnp.shape(t.log_p))[:-1]:
            raise ValueError(
                "LogWeightTerms.log_p_hat must be [...] for log_p [..., particles]; got "
                f"{tuple(jnp.shape(t.log_p_hat))} and {tuple(jnp.shape(t.log_p))}"
            )
        return fivo_lib.fivo_surrogates(t.log_p_hat), state

    return Estimator(
        name="fivo",
        init=lambda num_steps=None: (),
        surrogates=surrogates,
        requires=("log_p_hat",),
        particle_filter=settings,
    )
