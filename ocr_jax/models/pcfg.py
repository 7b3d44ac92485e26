"""A probabilistic context-free grammar (PCFG) and its inference network (thesis §8.4.1, appendix 8.A; Le et al. 2019).

The generative model: a parse tree z is drawn by expanding non-terminals depth-first, left to right (pre-order),
each with a production drawn from Cat(softmax(θ[non-terminal])); θ are the production logits, the only generative
parameters. The sentence s(z) is the tree's yield. The likelihood is the thesis' ABC relaxation
p(x | z) = exp(−L(x, s(z))²), with L the Levenshtein distance between token sequences.

Fixed shapes. A derivation is at most ``num_steps`` expansions (T), computed by one ``jax.lax.scan`` over T steps with
a stack of pending non-terminals and a mask of the steps taken. A derivation that has not finished after T expansions
is *capped*: its pending non-terminals stay unexpanded and appear in the yield, each as the token
``grammar.unexpanded_token`` (which matches no word, as a non-terminal leaf did in the public code, which capped the
tree's depth at 30 instead). Capping the number of expansions keeps the model a normalised distribution: the capped
derivations are the length-T prefixes of the uncapped ones, so p_θ^T(z) = Π (probabilities of the expansions made)
sums to one over finished and capped derivations together, and sampling, scoring and the bounds all refer to that
one distribution. ``Derivation.capped`` flags them.

Grammars have rules whose right-hand side is all terminals ("lexical", e.g. NP → stars) or all non-terminals (e.g.
S → NP VP), as the astronomers grammar does: a lexical rule emits its words at once, a non-lexical one pushes its
symbols onto the stack. The yield of a derivation with T expansions then has at most 1 + T·(R − 1) tokens
(R the longest right-hand side; ``max_length``).

The inference network q_φ(z | x) follows the thesis (and Le et al. 2017, "Inference compilation"): a GRU reads the
one-hot words of x into a sentence embedding; a second GRU runs over the expansions in the order they are made, its
input at step t being [sentence embedding, one-hot of the production chosen at step t − 1 (the "previous sample"),
one-hot of the non-terminal expanded at step t (the "address")]; a per-non-terminal MLP head (hidden 50, 25, ReLU, as
in the public code) turns its state into the logits of that non-terminal's productions. (The public PyTorch code
passes the parent's state and choice to each child instead of the previous expansion's; the thesis describes the
sequential form, which is also the cheaper one under ``scan``.)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ocr_jax import validation
from ocr_jax.models.modules import HoistedInputRNNCell

Array = jax.Array
PAD = -1  # token id of the padding after a sentence's end (one-hot: all zeros)

__all__ = [
    "ASTRONOMERS",
    "PAD",
    "Derivation",
    "Grammar",
    "InferenceNetwork",
    "derivation_log_prob",
    "encode_sentence",
    "expected_log_q",
    "init_production_logits",
    "levenshtein",
    "log_likelihood",
    "mean_production_kl",
    "network_for",
    "production_log_probs",
    "replay",
    "sample_model",
    "sample_q",
    "score_q",
    "to_tree",
    "words",
]


# ---- the grammar ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grammar:
    """A PCFG: ``productions[i]`` lists the right-hand sides of ``non_terminals[i]`` (tuples of symbol names), with
    probabilities ``probabilities[i]`` (the true ones, used to generate data). The start symbol is ``start``.

    Checked on construction (``ValueError`` naming the problem): symbols known and distinct, every right-hand side
    non-empty and all terminals or all non-terminals, probabilities non-negative and summing to one per non-terminal.
    """

    terminals: tuple[str, ...]
    non_terminals: tuple[str, ...]
    productions: tuple[tuple[tuple[str, ...], ...], ...]
    probabilities: tuple[tuple[float, ...], ...]
    start: str

    def __post_init__(self):
        terms, nts = tuple(self.terminals), tuple(self.non_terminals)
        if not terms or not nts:
            raise ValueError("a grammar needs at least one terminal and one non-terminal")
        if len(set(terms + nts)) != len(terms) + len(nts):
            raise ValueError(f"symbols must be distinct: terminals {terms}, non-terminals {nts}")
        if self.start not in nts:
            raise ValueError(f"start symbol {self.start!r} is not a non-terminal ({', '.join(nts)})")
        if len(self.productions) != len(nts) or len(self.probabilities) != len(nts):
            raise ValueError(
                f"productions and probabilities need one entry per non-terminal ({len(nts)}); got "
                f"{len(self.productions)} and {len(self.probabilities)}"
            )
        for nt, rules, probs in zip(nts, self.productions, self.probabilities, strict=True):
            if not rules or len(rules) != len(probs):
                raise ValueError(f"{nt}: {len(rules)} productions but {len(probs)} probabilities")
            for rhs in rules:
                unknown = [s for s in rhs if s not in terms and s not in nts]
                if not rhs or unknown:
                    raise ValueError(f"{nt} -> {' '.join(rhs) or '(empty)'}: empty or unknown symbols {unknown}")
                kinds = {s in terms for s in rhs}
                if len(kinds) != 1:
                    raise ValueError(
                        f"{nt} -> {' '.join(rhs)} mixes terminals and non-terminals; rules must be all terminals "
                        "(lexical) or all non-terminals"
                    )
            p = np.asarray(probs, np.float64)
            if np.any(p < 0) or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-6):
                raise ValueError(f"{nt}: production probabilities must be >= 0 and sum to 1; got {tuple(probs)}")

    # sizes
    @property
    def num_terminals(self) -> int:
        return len(self.terminals)

    @property
    def num_non_terminals(self) -> int:
        return len(self.non_terminals)

    @property
    def num_tokens(self) -> int:
        """Vocabulary of sentences: the terminals and the unexpanded-non-terminal token."""
        return self.num_terminals + 1

    @property
    def unexpanded_token(self) -> int:
        return self.num_terminals

    @property
    def max_productions(self) -> int:
        return max(len(r) for r in self.productions)

    @property
    def max_rhs(self) -> int:
        return max(len(rhs) for rules in self.productions for rhs in rules)

    def max_length(self, num_steps: int) -> int:
        """Longest yield of a derivation of at most ``num_steps`` expansions (each changes the count of pending
        symbols plus emitted words by len(rhs) − 1)."""
        return 1 + num_steps * max(self.max_rhs - 1, 0)

    # arrays (numpy; constants under jit)
    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        n, j, r = self.num_non_terminals, self.max_productions, self.max_rhs
        t_index = {s: i for i, s in enumerate(self.terminals)}
        n_index = {s: i for i, s in enumerate(self.non_terminals)}
        mask = np.zeros((n, j), bool)
        lexical = np.zeros((n, j), bool)
        rhs_length = np.zeros((n, j), np.int32)
        rhs_tokens = np.full((n, j, r), PAD, np.int32)  # lexical: the words, in order
        rhs_push = np.zeros((n, j, r), np.int32)  # non-lexical: the symbols reversed (last pushed = first expanded)
        probs = np.zeros((n, j), np.float64)
        for a, (rules, ps) in enumerate(zip(self.productions, self.probabilities, strict=True)):
            for b, (rhs, p) in enumerate(zip(rules, ps, strict=True)):
                mask[a, b] = True
                probs[a, b] = p
                rhs_length[a, b] = len(rhs)
                if rhs[0] in t_index:
                    lexical[a, b] = True
                    rhs_tokens[a, b, : len(rhs)] = [t_index[s] for s in rhs]
                else:
                    rhs_push[a, b, : len(rhs)] = [n_index[s] for s in reversed(rhs)]
        return dict(
            mask=mask,
            lexical=lexical,
            rhs_length=rhs_length,
            rhs_tokens=rhs_tokens,
            rhs_push=rhs_push,
            probs=probs,
            start=np.int32(n_index[self.start]),
        )

    def true_log_probs(self) -> Array:
        """log p(production | non-terminal) ``[N, J]`` of the grammar's probabilities (−inf where no production)."""
        a = self.arrays
        with np.errstate(divide="ignore"):
            return jnp.asarray(np.where(a["mask"], np.log(a["probs"]), -np.inf), jnp.float32)

    def encode(self, sentence: str | Sequence[str], max_length: int) -> tuple[np.ndarray, int]:
        """Words (a string split on spaces, or a list) -> (token ids ``[max_length]`` padded with PAD, length)."""
        ws = sentence.split() if isinstance(sentence, str) else list(sentence)
        index = {s: i for i, s in enumerate(self.terminals)}
        unknown = [w for w in ws if w not in index]
        if unknown:
            raise ValueError(f"words {unknown} are not terminals of the grammar ({', '.join(self.terminals)})")
        if not ws or len(ws) > max_length:
            raise ValueError(f"a sentence needs 1..{max_length} words; got {len(ws)}")
        out = np.full(max_length, PAD, np.int32)
        out[: len(ws)] = [index[w] for w in ws]
        return out, len(ws)


# The astronomers PCFG (Manning & Schütze 1999; thesis Fig. 8.A.1).
ASTRONOMERS = Grammar(
    terminals=("astronomers", "ears", "saw", "stars", "telescopes", "with"),
    non_terminals=("S", "NP", "VP", "PP", "P", "V"),
    productions=(
        (("NP", "VP"),),
        (("NP", "PP"), ("astronomers",), ("ears",), ("saw",), ("stars",), ("telescopes",)),
        (("V", "NP"), ("VP", "PP")),
        (("P", "NP"),),
        (("with",),),
        (("saw",),),
    ),
    probabilities=((1.0,), (0.4, 0.1, 0.18, 0.04, 0.18, 0.1), (0.7, 0.3), (1.0,), (1.0,), (1.0,)),
    start="S",
)


def production_log_probs(logits: Array, grammar: Grammar) -> Array:
    """log softmax of the production logits ``[..., N, J]`` over each non-terminal's productions (−inf elsewhere)."""
    mask = jnp.asarray(grammar.arrays["mask"])
    if jnp.shape(logits)[-2:] != mask.shape:
        raise ValueError(
            f"production logits must have shape [..., {mask.shape[0]}, {mask.shape[1]}]; got {logits.shape}"
        )
    masked = jnp.where(mask, logits, -1e30)
    return jnp.where(mask, jax.nn.log_softmax(masked, axis=-1), -jnp.inf)


def init_production_logits(key: Array, grammar: Grammar) -> Array:
    """θ at the start of training: N(0, 1) logits (as the public code), zero where a non-terminal has no production."""
    mask = jnp.asarray(grammar.arrays["mask"])
    return jnp.where(mask, jax.random.normal(key, mask.shape), 0.0)


def mean_production_kl(true_log_probs: Array, log_probs: Array, grammar: Grammar) -> Array:
    """(1/N) Σ_nt KL(p_true(· | nt) ‖ p_θ(· | nt)): the thesis' generative-model error (Fig. 8.4.1, top)."""
    mask = jnp.asarray(grammar.arrays["mask"])
    p = jnp.where(mask, jnp.exp(true_log_probs), 0.0)
    diff = jnp.where(mask & (p > 0), true_log_probs - jnp.where(mask, log_probs, 0.0), 0.0)
    return jnp.mean(jnp.sum(p * diff, axis=-1), axis=-1)


# ---- derivations ----------------------------------------------------------------------------------------------------


class Derivation(NamedTuple):
    """A derivation (parse tree in pre-order) of at most T expansions and its yield.

    * ``non_terminals`` ``[..., T]`` int32: the non-terminal expanded at each step (0 after the end);
    * ``productions`` ``[..., T]`` int32: the production chosen at each step (0 after the end);
    * ``mask`` ``[..., T]`` bool: the step was taken;
    * ``tokens`` ``[..., max_length]`` int32: the yield, padded with ``PAD``; an unexpanded non-terminal of a capped
      derivation is ``grammar.unexpanded_token``;
    * ``length`` ``[...]`` int32; ``capped`` ``[...]`` bool: non-terminals were left unexpanded after T steps.
    """

    non_terminals: Array
    productions: Array
    mask: Array
    tokens: Array
    length: Array
    capped: Array


Choose = Callable[[Any, Array, Array, Any], tuple[Array, Array, Any]]


def _derive(grammar: Grammar, num_steps: int, choose: Choose, state: Any, xs: Any) -> tuple[Derivation, Array]:
    """One derivation (no batch axes) by a scan over ``num_steps`` expansions.

    ``choose(state, non_terminal, t, x_t) -> (production, score, new_state)`` picks the production of step t
    (``x_t`` is step t's slice of ``xs``, e.g. Gumbel noise or a given production); ``score`` is collected per step
    (0 where the step is not taken) and returned with the derivation. ``state`` is updated only on steps taken."""
    a = grammar.arrays
    lexical, rhs_length = jnp.asarray(a["lexical"]), jnp.asarray(a["rhs_length"])
    rhs_tokens, rhs_push = jnp.asarray(a["rhs_tokens"]), jnp.asarray(a["rhs_push"])
    r = grammar.max_rhs
    max_len = grammar.max_length(num_steps)
    stack = jnp.zeros(max_len + r, jnp.int32).at[0].set(a["start"])  # pending ≤ yield length
    tokens = jnp.full(max_len + r, PAD, jnp.int32)
    pos = jnp.arange(max_len + r)

    def step(carry, inputs):
        stack, top, tokens, length, state = carry
        t, x_t = inputs
        active = top > 0
        nt = stack[jnp.maximum(top - 1, 0)]
        production, score, new_state = choose(state, nt, t, x_t)
        production = jnp.where(active, production, 0).astype(jnp.int32)
        lex, m = lexical[nt, production], rhs_length[nt, production]
        emit = active & lex
        push = active & ~lex
        # Writes as masked selects (a dynamic_update_slice under vmap becomes a scatter, slower on CPU).
        for i in range(r):
            tokens = jnp.where(emit & (i < m) & (pos == length + i), rhs_tokens[nt, production, i], tokens)
            stack = jnp.where(push & (i < m) & (pos == top - 1 + i), rhs_push[nt, production, i], stack)
        length = length + jnp.where(emit, m, 0)
        top = top - active.astype(jnp.int32) + jnp.where(push, m, 0)
        state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_state, state)
        out = (jnp.where(active, nt, 0), production, active, jnp.where(active, score, 0.0))
        return (stack, top, tokens, length, state), out

    carry0 = (stack, jnp.int32(1), tokens, jnp.int32(0), state)
    (_, top, tokens, length, _), (nts, prods, mask, scores) = jax.lax.scan(
        step, carry0, (jnp.arange(num_steps), xs), length=num_steps
    )
    # Pending non-terminals of a capped derivation join the yield as unexpanded tokens (all alike: order is moot).
    tokens = jnp.where((pos >= length) & (pos < length + top), grammar.unexpanded_token, tokens)
    length = length + top
    tokens = jnp.where(pos < length, tokens, PAD)[:max_len]
    return Derivation(nts, prods, mask, tokens, length, top > 0), scores


def _check_steps(num_steps) -> int:
    return validation.check_count(num_steps, "num_steps", hint=" (the cap on the number of expansions)")


def sample_model(key: Array, log_probs: Array, grammar: Grammar, num_steps: int, shape: tuple[int, ...] = ()):
    """Derivations z ~ p^T(z) of the PCFG with production log-probabilities ``log_probs [N, J]`` (e.g.
    ``grammar.true_log_probs()`` or ``production_log_probs(θ)``), capped at ``num_steps`` expansions.
    Returns a :class:`Derivation` with leading axes ``shape``; x = its yield (``tokens``, ``length``)."""
    num_steps = _check_steps(num_steps)
    log_probs = jax.lax.stop_gradient(log_probs)
    # Gumbel-max sampling with the noise drawn before the scan (random bits inside a scan compile slowly on CPU).
    gumbel = jax.random.gumbel(key, (*shape, num_steps, grammar.max_productions))

    def one(noise):
        def choose(state, nt, t, noise_t):
            return jnp.argmax(log_probs[nt] + noise_t), 0.0, state

        return _derive(grammar, num_steps, choose, (), noise)[0]

    fn = one
    for _ in shape:
        fn = jax.vmap(fn)
    return fn(gumbel)


def replay(grammar: Grammar, productions: Array, num_steps: int | None = None) -> Derivation:
    """The derivation that makes the choices ``productions [..., T']`` in order (entries after the derivation ends
    are ignored; T' ≥ num_steps). ValueError (on concrete input) for a production a non-terminal does not have."""
    productions = jnp.asarray(productions, jnp.int32)
    num_steps = _check_steps(productions.shape[-1] if num_steps is None else num_steps)
    if productions.shape[-1] < num_steps:
        raise ValueError(f"productions need >= num_steps = {num_steps} entries; got shape {productions.shape}")
    mask = jnp.asarray(grammar.arrays["mask"])
    if not validation.is_traced(productions):
        bad = np.asarray(productions[..., :num_steps])
        if np.any(bad < 0) or np.any(bad >= grammar.max_productions):
            raise ValueError(f"productions must be in [0, {grammar.max_productions}); got {bad}")

    def one(p):
        def choose(state, nt, t, given):
            return given, jnp.where(mask[nt, given], 0.0, 1.0), state

        d, invalid = _derive(grammar, num_steps, choose, (), p[:num_steps])
        return d, jnp.sum(invalid)

    fn = one
    for _ in productions.shape[:-1]:
        fn = jax.vmap(fn)
    d, invalid = fn(productions)
    if not validation.is_traced(invalid) and np.any(np.asarray(invalid) > 0):
        raise ValueError("productions name a production that its non-terminal does not have")
    return d


def derivation_log_prob(log_probs: Array, d: Derivation) -> Array:
    """log p^T(z) = Σ_t mask_t · log p(production_t | non-terminal_t) ``[...]`` (differentiable in ``log_probs``)."""
    lp = log_probs[d.non_terminals, d.productions]
    return jnp.sum(jnp.where(d.mask, lp, 0.0), axis=-1)


# ---- the likelihood -------------------------------------------------------------------------------------------------


def levenshtein(a: Array, a_length: Array, b: Array, b_length: Array) -> Array:
    """Levenshtein (edit) distance between token sequences ``a[..., :a_length]`` and ``b[..., :b_length]`` (unit cost
    insertions, deletions, substitutions), ``[...]`` int32 (leading axes broadcast). Jittable: a scan over the rows
    of the dynamic-programming table, each row computed at once with a cumulative minimum (the insertions chain
    within a row: D[i, j] = min_k≤j (D'[i, k] + j − k))."""
    a, b = jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)
    if a.ndim < 1 or b.ndim < 1:
        raise ValueError(f"levenshtein takes token arrays [..., length]; got shapes {a.shape} and {b.shape}")
    batch = jnp.broadcast_shapes(a.shape[:-1], b.shape[:-1], jnp.shape(a_length), jnp.shape(b_length))
    a = jnp.broadcast_to(a, batch + a.shape[-1:])
    b = jnp.broadcast_to(b, batch + b.shape[-1:])
    a_length = jnp.broadcast_to(jnp.asarray(a_length, jnp.int32), batch)
    b_length = jnp.broadcast_to(jnp.asarray(b_length, jnp.int32), batch)
    for name, arr, n in (("a_length", a_length, a.shape[-1]), ("b_length", b_length, b.shape[-1])):
        if not validation.is_traced(arr) and (np.any(np.asarray(arr) < 0) or np.any(np.asarray(arr) > n)):
            raise ValueError(f"{name} must be in [0, {n}] (the padded length); got {np.asarray(arr)}")
    j = jnp.arange(b.shape[-1] + 1, dtype=jnp.int32)
    row0 = jnp.broadcast_to(j, batch + j.shape)
    answer0 = jnp.where((a_length == 0)[..., None], row0, 0)

    def row(carry, inputs):
        prev, answer = carry
        i, a_i = inputs
        substitute = prev[..., :-1] + (a_i[..., None] != b).astype(jnp.int32)
        delete = prev[..., 1:] + 1
        first = jnp.broadcast_to(i, batch + (1,))
        best = jnp.concatenate([first, jnp.minimum(substitute, delete)], axis=-1)
        new = jax.lax.cummin(best - j, axis=best.ndim - 1) + j
        answer = jnp.where((a_length == i)[..., None], new, answer)
        return (new, answer), None

    rows = jnp.arange(1, a.shape[-1] + 1, dtype=jnp.int32)
    (_, answer), _ = jax.lax.scan(row, (row0, answer0), (rows, jnp.moveaxis(a, -1, 0)))
    return jnp.take_along_axis(answer, b_length[..., None], axis=-1)[..., 0]


def log_likelihood(x_tokens: Array, x_length: Array, z_tokens: Array, z_length: Array) -> Array:
    """log p(x | z) = −L(x, s(z))² (the thesis' ABC relaxation of the 0/1 likelihood), float32 ``[...]``."""
    return -jnp.square(levenshtein(z_tokens, z_length, x_tokens, x_length).astype(jnp.float32))


# ---- the inference network ------------------------------------------------------------------------------------------


class InferenceNetwork(nn.Module):
    """q_φ(z | x): sentence GRU → embedding; per-expansion GRU over [embedding, previous production, address];
    per-non-terminal MLP heads (ReLU) → production logits ``[..., J]``. Sizes as the public code: 100, 100, (50, 25).

    The expansion GRU is ``modules.HoistedInputRNNCell``: the embedding's share of its gates is computed once per
    sentence (:meth:`project`), not at every step of every particle — the same function as a GRU fed the
    concatenated input. The heads' first layer runs for all non-terminals in one matmul; the two small layers after it
    only for the non-terminal being expanded.
    """

    num_tokens: int
    num_non_terminals: int
    max_productions: int
    sentence_features: int = 100
    hidden_features: int = 100
    head_features: tuple[int, int] = (50, 25)

    def setup(self):
        n, j = self.num_non_terminals, self.max_productions
        h1, h2 = self.head_features
        self.sentence_rnn = nn.RNN(nn.GRUCell(self.sentence_features), return_carry=True, name="sentence_rnn")
        self.cell = HoistedInputRNNCell("gru", self.hidden_features, name="expansion_rnn")
        self.head_in = nn.Dense(n * h1, name="head_in")  # the first layer of all N heads in one matmul
        init = nn.initializers.lecun_normal(batch_axis=(0,))
        self.head_mid_kernel = self.param("head_mid_kernel", init, (n, h1, h2))
        self.head_mid_bias = self.param("head_mid_bias", nn.initializers.zeros, (n, h2))
        self.head_out_kernel = self.param("head_out_kernel", init, (n, h2, j))
        self.head_out_bias = self.param("head_out_bias", nn.initializers.zeros, (n, j))

    def embed(self, tokens: Array, length: Array) -> Array:
        """Sentence embedding ``[..., sentence_features]`` of ``tokens [..., L]`` (PAD after ``length``)."""
        x = jax.nn.one_hot(tokens, self.num_tokens)  # PAD (−1) -> zeros
        lead = tokens.shape[:-1]
        flat = x.reshape((-1,) + x.shape[-2:])
        carry, _ = self.sentence_rnn(flat, seq_lengths=jnp.reshape(length, (-1,)))
        return carry.reshape(lead + carry.shape[-1:])

    def project(self, embedding: Array) -> Array:
        """The sentence embedding's share of the expansion GRU's gates ``[..., 3 * hidden_features]``."""
        return self.cell.project(embedding)

    def initial_state(self, batch_shape: tuple[int, ...] = ()) -> tuple[Array, Array]:
        """(GRU state, previous production) before the first expansion: zeros and "none" (−1, a zero one-hot)."""
        return jnp.zeros(batch_shape + (self.hidden_features,)), jnp.full(batch_shape, -1, jnp.int32)

    def step(self, state, projected: Array, non_terminal: Array) -> tuple[tuple[Array, Array], Array]:
        """One expansion: new GRU state and the logits ``[..., J]`` of ``non_terminal``'s productions (unmasked).
        ``projected`` is :meth:`project` of the sentence embedding."""
        h, previous = state
        step_inputs = jnp.concatenate(
            [jax.nn.one_hot(previous, self.max_productions), jax.nn.one_hot(non_terminal, self.num_non_terminals)],
            axis=-1,
        )
        h, _ = self.cell(h, projected, step_inputs)
        n, (h1, _) = self.num_non_terminals, self.head_features
        a = nn.relu(self.head_in(h)).reshape(h.shape[:-1] + (n, h1))
        a = jnp.take_along_axis(a, non_terminal[..., None, None], axis=-2)[..., 0, :]
        b = nn.relu(
            jnp.einsum("...d,...de->...e", a, self.head_mid_kernel[non_terminal]) + self.head_mid_bias[non_terminal]
        )
        logits = (
            jnp.einsum("...e,...ej->...j", b, self.head_out_kernel[non_terminal]) + self.head_out_bias[non_terminal]
        )
        return (h, previous), logits

    def __call__(self, tokens: Array, length: Array, non_terminal: Array) -> Array:
        """Initialisation entry point: the logits of the first expansion of ``non_terminal`` given the sentence."""
        projected = self.project(self.embed(tokens, length))
        _, logits = self.step(self.initial_state(jnp.shape(non_terminal)), projected, non_terminal)
        return logits


def network_for(grammar: Grammar, **sizes) -> InferenceNetwork:
    """The :class:`InferenceNetwork` sized for ``grammar`` (``sizes``: sentence/hidden/head features)."""
    return InferenceNetwork(grammar.num_tokens, grammar.num_non_terminals, grammar.max_productions, **sizes)


def encode_sentence(net: InferenceNetwork, params, tokens: Array, length: Array) -> Array:
    """What the expansion GRU reads of a sentence ``tokens [..., L]``: the projection ``[..., 3 * hidden]`` of its
    embedding (:meth:`InferenceNetwork.project`), computed once per sentence."""

    def fn(module, tokens, length):
        return module.project(module.embed(tokens, length))

    return net.apply(params, tokens, length, method=fn)


def _q_derive(net, params, grammar, num_steps, projected, choose_production, xs):
    """One derivation under q given one sentence (its projection, ``encode_sentence``); the score of each step is
    log q(production_t | x, earlier choices)."""
    mask = jnp.asarray(grammar.arrays["mask"])

    def choose(state, nt, t, x_t):
        (h, _), logits = net.apply(params, state, projected, nt, method=InferenceNetwork.step)
        log_q = jax.nn.log_softmax(jnp.where(mask[nt], logits, -1e30))
        production = choose_production(logits, mask[nt], x_t)
        return production, log_q[production], (h, production)

    state = net.apply(params, method=InferenceNetwork.initial_state)
    return _derive(grammar, num_steps, choose, state, xs)


def sample_q(
    net: InferenceNetwork,
    params,
    grammar: Grammar,
    key: Array,
    tokens: Array,
    length: Array,
    num_particles: int,
    num_steps: int,
) -> tuple[Derivation, Array]:
    """K derivations z_k ~ q_φ(· | x) per sentence ``tokens [..., L]``: a :class:`Derivation` with axes
    ``[..., K, ...]`` and log q_φ(z_k | x) ``[..., K]``, differentiable in φ at the (stopped) samples: a score-function
    term."""
    num_particles = validation.check_count(num_particles, "num_particles")
    num_steps = _check_steps(num_steps)
    projected = encode_sentence(net, params, tokens, length)  # [..., 3 * hidden]
    lead = projected.shape[:-1]

    def pick(logits, valid, noise_t):  # Gumbel-max (noise drawn before the scan)
        return jnp.argmax(jnp.where(valid, jax.lax.stop_gradient(logits), -jnp.inf) + noise_t)

    def one(e, noise):
        d, scores = _q_derive(net, params, grammar, num_steps, e, pick, noise)
        return d, jnp.sum(scores)

    gumbel = jax.random.gumbel(key, (*lead, num_particles, num_steps, grammar.max_productions))
    fn = jax.vmap(one, in_axes=(None, 0))
    for _ in lead:
        fn = jax.vmap(fn)
    return fn(projected, gumbel)


def score_q(net: InferenceNetwork, params, grammar: Grammar, d: Derivation, tokens: Array, length: Array) -> Array:
    """log q_φ(z | x) ``[...]`` of given derivations ``d`` (axes ``[...]``) and sentences ``tokens [..., L]`` (the
    sleep-φ term, thesis Eq. 8.5); the sentences' axes broadcast against the derivations' (embedded once each)."""
    projected = encode_sentence(net, params, tokens, length)
    num_steps = d.productions.shape[-1]
    lead = jnp.broadcast_shapes(projected.shape[:-1], d.productions.shape[:-1])
    projected = jnp.broadcast_to(projected, lead + projected.shape[-1:])
    productions = jnp.broadcast_to(d.productions, lead + d.productions.shape[-1:])

    def given(logits, valid, production):
        return production

    def one(e, productions):
        _, scores = _q_derive(net, params, grammar, num_steps, e, given, productions)
        return jnp.sum(scores)

    fn = one
    for _ in lead:
        fn = jax.vmap(fn)
    return fn(projected, productions)


def expected_log_q(net, params, grammar: Grammar, d: Derivation) -> Array:
    """mean over the derivations ``d`` (drawn from a PCFG, with their own yields as x) of −log q_φ(z | x): the sleep-φ
    loss, an estimate of E_p(x) KL(p(z | x) ‖ q_φ(z | x)) up to the constant E_p(x) H(p(z | x)) (thesis §8.4.1)."""
    return -jnp.mean(score_q(net, params, grammar, d, d.tokens, d.length))


# ---- reading derivations --------------------------------------------------------------------------------------------


def words(grammar: Grammar, tokens, length) -> list[str]:
    """The yield as words (``<NT>`` for an unexpanded non-terminal)."""
    tokens = np.asarray(tokens)[: int(length)]
    return [grammar.terminals[t] if t < grammar.num_terminals else "<NT>" for t in tokens]


def to_tree(grammar: Grammar, d: Derivation):
    """One derivation (no batch axes) as a nested list ``[symbol, child, ...]`` (terminals as strings; an unexpanded
    non-terminal as its name), as the public code writes trees."""
    nts, prods, mask = (np.asarray(v) for v in (d.non_terminals, d.productions, d.mask))
    steps = iter([(int(n), int(p)) for n, p, m in zip(nts, prods, mask, strict=True) if m])

    def build(symbol: str):
        if symbol in grammar.terminals:
            return symbol
        a = grammar.non_terminals.index(symbol)
        step = next(steps, None)
        if step is None:
            return symbol  # left unexpanded at the cap
        assert step[0] == a, (step, symbol)
        rhs = grammar.productions[a][step[1]]
        return [symbol] + [build(s) for s in rhs]

    return build(grammar.start)
