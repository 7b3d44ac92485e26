"""The PCFG model (ocr_jax.models.pcfg) and its study (experiments/pcfg_study.py, thesis §8.4.1): closed forms."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import pcfg_study
from ocr_jax import configs
from ocr_jax.models import pcfg

G = pcfg.ASTRONOMERS
NT = {s: i for i, s in enumerate(G.non_terminals)}


def reference_levenshtein(a, b) -> int:
    """Plain dynamic programming (Wagner–Fischer)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def small_config():
    cfg = configs.get_config("pcfg:quick")
    cfg.max_expansions = 12
    return cfg


# ---- grammar and derivations ----------------------------------------------------------------------------------------


def test_astronomers_grammar_is_the_thesis_figure_8A1():
    p = np.exp(np.asarray(G.true_log_probs()))
    np.testing.assert_allclose(p[NT["NP"], :6], [0.4, 0.1, 0.18, 0.04, 0.18, 0.1], rtol=1e-6)
    np.testing.assert_allclose(p[NT["VP"], :2], [0.7, 0.3], rtol=1e-6)
    for nt in ("S", "PP", "P", "V"):
        assert p[NT[nt], 0] == pytest.approx(1.0) and np.all(p[NT[nt], 1:] == 0)
    assert G.productions[NT["S"]] == (("NP", "VP"),) and G.productions[NT["V"]] == (("saw",),)
    assert G.max_length(64) == 65 and G.unexpanded_token == 6


def test_hand_built_derivation_log_prob_is_the_product_of_its_production_probabilities():
    # (S (NP astronomers) (VP (V saw) (NP stars))): S→NP VP, NP→astronomers, VP→V NP, V→saw, NP→stars (thesis §8.4.1)
    d = pcfg.replay(G, jnp.array([0, 1, 0, 0, 4, 0, 0, 0]))
    assert pcfg.words(G, d.tokens, d.length) == ["astronomers", "saw", "stars"] and not bool(d.capped)
    assert pcfg.to_tree(G, d) == ["S", ["NP", "astronomers"], ["VP", ["V", "saw"], ["NP", "stars"]]]
    np.testing.assert_array_equal(d.non_terminals[:5], [NT["S"], NT["NP"], NT["VP"], NT["V"], NT["NP"]])
    np.testing.assert_array_equal(d.mask, [1, 1, 1, 1, 1, 0, 0, 0])
    lp = pcfg.derivation_log_prob(G.true_log_probs(), d)
    np.testing.assert_allclose(lp, math.log(1.0 * 0.1 * 0.7 * 1.0 * 0.18), rtol=1e-6)
    # Under learned logits: the sum of the chosen productions' log-softmax entries, differentiable in θ.
    theta = pcfg.init_production_logits(jax.random.PRNGKey(0), G)
    lsm = {nt: jax.nn.log_softmax(theta[NT[nt], : len(G.productions[NT[nt]])]) for nt in NT}
    expected = lsm["S"][0] + lsm["NP"][1] + lsm["VP"][0] + lsm["V"][0] + lsm["NP"][4]
    np.testing.assert_allclose(pcfg.derivation_log_prob(pcfg.production_log_probs(theta, G), d), expected, rtol=1e-6)
    g = jax.grad(lambda t: pcfg.derivation_log_prob(pcfg.production_log_probs(t, G), d))(theta)
    # d/dθ of the two NP log-softmax entries (float32: a CI machine's value differed from the closed form by one ulp)
    np.testing.assert_allclose(
        g[NT["NP"], :6], np.eye(6)[1] + np.eye(6)[4] - 2 * jax.nn.softmax(theta[NT["NP"], :6]), rtol=1e-6, atol=1e-7
    )
    assert np.all(g[NT["S"]] == 0)  # one production: no gradient


def test_capped_derivation_keeps_pending_non_terminals_as_unexpanded_tokens():
    # S → NP VP, then NP → NP PP twice: after 3 expansions NP PP PP VP are pending.
    d = pcfg.replay(G, jnp.array([0, 0, 0]))
    assert bool(d.capped) and int(d.length) == 4
    assert pcfg.words(G, d.tokens, d.length) == ["<NT>"] * 4
    assert pcfg.to_tree(G, d) == ["S", ["NP", ["NP", "NP", "PP"], "PP"], "VP"]
    np.testing.assert_allclose(pcfg.derivation_log_prob(G.true_log_probs(), d), math.log(0.4 * 0.4), rtol=1e-6)


def test_sampler_production_frequencies_match_the_probabilities_and_cap_probability():
    n = 3000
    d = jax.jit(lambda k: pcfg.sample_model(k, G.true_log_probs(), G, 64, (n,)))(jax.random.PRNGKey(0))
    nts, prods, mask = (np.asarray(v) for v in (d.non_terminals, d.productions, d.mask))
    for nt, probs in (("NP", G.probabilities[NT["NP"]]), ("VP", G.probabilities[NT["VP"]])):
        chosen = prods[mask & (nts == NT[nt])]
        freq = np.bincount(chosen, minlength=len(probs)) / len(chosen)
        se = np.sqrt(np.asarray(probs) * (1 - np.asarray(probs)) / len(chosen))
        assert np.all(np.abs(freq - probs) < 4 * se + 1e-3), (nt, freq, probs)
    # Every yield is the sentence of its derivation, and its log-prob is that of the replayed choices.
    again = pcfg.replay(G, d.productions[:50])
    np.testing.assert_array_equal(again.tokens, d.tokens[:50])
    # With a cap of 5 expansions a derivation finishes iff NP→word, VP→V NP, NP→word: probability 0.6·0.7·0.6.
    d5 = jax.jit(lambda k: pcfg.sample_model(k, G.true_log_probs(), G, 5, (n,)))(jax.random.PRNGKey(1))
    p = 0.6 * 0.7 * 0.6
    assert abs(float(np.mean(~np.asarray(d5.capped))) - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_levenshtein_matches_plain_dynamic_programming_on_random_padded_strings():
    rng = np.random.default_rng(0)
    n, la, lb = 300, 9, 7
    a = rng.integers(0, 3, (n, la))
    b = rng.integers(0, 3, (n, lb))
    a_len, b_len = rng.integers(0, la + 1, n), rng.integers(0, lb + 1, n)
    got = np.asarray(jax.jit(pcfg.levenshtein)(a, a_len, b, b_len))
    want = [reference_levenshtein(list(a[i, : a_len[i]]), list(b[i, : b_len[i]])) for i in range(n)]
    np.testing.assert_array_equal(got, want)
    # Broadcasting over leading axes, and the likelihood −L².
    x, _ = G.encode("astronomers saw stars", 5)
    z, _ = G.encode("astronomers saw ears with stars", 5)
    assert int(pcfg.levenshtein(z, 5, x, 3)) == 2
    np.testing.assert_allclose(pcfg.log_likelihood(x, 3, np.stack([z, x]), np.array([5, 3])), [-4.0, 0.0])


# ---- the inference network ------------------------------------------------------------------------------------------


def tiny_network():
    net = pcfg.network_for(G, sentence_features=8, hidden_features=8, head_features=(4, 4))
    tokens = jnp.zeros((1, 13), jnp.int32)
    params = net.init(jax.random.PRNGKey(0), tokens, jnp.ones(1, jnp.int32), jnp.zeros(1, jnp.int32))
    return net, params


def test_sentence_embedding_ignores_padding():
    net, params = tiny_network()
    x, n = G.encode("ears saw stars with telescopes", 13)
    short = np.asarray(x[:7])
    e_long = pcfg.encode_sentence(net, params, x, n)
    e_short = pcfg.encode_sentence(net, params, short, n)
    np.testing.assert_allclose(e_long, e_short, rtol=1e-6)
    other = x.copy()
    other[n:] = 3  # junk after the end is ignored too
    np.testing.assert_allclose(pcfg.encode_sentence(net, params, other, n), e_long, rtol=1e-6)


def test_q_log_prob_of_its_samples_and_the_sleep_loss_closed_forms():
    net, params = tiny_network()
    d = pcfg.sample_model(jax.random.PRNGKey(3), G.true_log_probs(), G, 12, (20,))
    # sample_q's log q equals score_q's at the same samples (the sleep-φ and wake terms agree).
    z, log_q = pcfg.sample_q(net, params, G, jax.random.PRNGKey(4), d.tokens[:4], d.length[:4], 3, 12)
    np.testing.assert_allclose(log_q, pcfg.score_q(net, params, G, z, d.tokens[:4, None], d.length[:4, None]), 1e-5)
    # With every weight zero and the output bias set to the true log-probabilities, q(z | x) = p_true(z): the sleep
    # loss is −mean log p_true(z) over the derivations.
    sleep_loss = jax.jit(lambda p: pcfg.expected_log_q(net, p, G, d))
    zero = jax.tree.map(jnp.zeros_like, params)
    prior = jax.tree.map(lambda a: a, zero)
    prior["params"]["head_out_bias"] = jnp.where(G.arrays["mask"], G.true_log_probs(), 0.0)
    want = -np.mean(pcfg.derivation_log_prob(G.true_log_probs(), d))
    np.testing.assert_allclose(sleep_loss(prior), want, rtol=1e-5)
    # All zero: q uniform over each non-terminal's productions, −log q(z|x) = Σ_t log J(nt_t).
    num = np.asarray(G.arrays["mask"]).sum(-1)
    want = np.mean(np.sum(np.where(d.mask, np.log(num[np.asarray(d.non_terminals)]), 0.0), -1))
    np.testing.assert_allclose(sleep_loss(zero), want, rtol=1e-5)


# ---- the study's estimators -----------------------------------------------------------------------------------------


def study_gradients(cfg, methods, num_particles=3):
    """Each method's gradients (methods vmapped, as the study does) at one initial point and one batch."""
    params = pcfg_study.init_params(cfg, jax.random.PRNGKey(0))
    x = pcfg.sample_model(jax.random.PRNGKey(1), G.true_log_probs(), G, cfg.max_expansions, (2,))

    def one(i):
        return pcfg_study.gradients(cfg, methods, i, params, x.tokens, x.length, jax.random.PRNGKey(2), num_particles)

    return jax.jit(jax.vmap(one))(jnp.arange(len(methods)))


@pytest.mark.slow  # ~20-40 s on 2 busy cores: one compile of the four estimators' gradients
def test_every_estimator_gives_finite_gradients():
    cfg = small_config()
    methods = ["ws", "ww", "vimco", "reinforce"]
    grads, (bound, _) = study_gradients(cfg, methods)
    for i, name in enumerate(methods):
        g = jax.tree.map(lambda a, i=i: a[i], grads)
        assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g)) and np.isfinite(bound[i]), name
        assert np.any(g["generative"][NT["NP"]] != 0), name
        assert np.all(g["generative"][NT["S"]] == 0), name  # one production: no gradient
        assert sum(float(jnp.sum(jnp.abs(v))) for v in jax.tree.leaves(g["inference"])) > 0, name
    # The same particles: the θ-gradient is IWAE's for all four; the φ-gradients differ.
    for i in (1, 2, 3):
        np.testing.assert_allclose(grads["generative"][0], grads["generative"][i], rtol=1e-5, atol=1e-7)
    kernel = grads["inference"]["params"]["head_in"]["kernel"]
    assert all(not np.allclose(kernel[i], kernel[j]) for i in range(4) for j in range(i))


@pytest.mark.slow  # three more compiles
def test_a_method_group_computes_each_methods_gradients_as_when_alone():
    cfg = small_config()
    group, _ = study_gradients(cfg, ["ww", "vimco", "reinforce"])
    for i, name in enumerate(["ww", "vimco", "reinforce"]):
        alone, _ = study_gradients(cfg, [name])
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda v, i=i: v[i], group)), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-6)  # batched vs single: float order


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="mixes terminals and non-terminals"):
        pcfg.Grammar(("a",), ("S",), ((("S", "a"),),), ((1.0,),), "S")
    with pytest.raises(ValueError, match="sum to 1"):
        pcfg.Grammar(("a",), ("S",), ((("a",), ("S", "S")),), ((0.5, 0.6),), "S")
    with pytest.raises(ValueError, match="unknown symbols"):
        pcfg.Grammar(("a",), ("S",), ((("b",),),), ((1.0,),), "S")
    with pytest.raises(ValueError, match="start symbol"):
        pcfg.Grammar(("a",), ("S",), ((("a",),),), ((1.0,),), "X")
    with pytest.raises(ValueError, match="not terminals"):
        G.encode("astronomers saw planets", 8)
    with pytest.raises(ValueError, match="does not have"):
        pcfg.replay(G, jnp.array([0, 1, 2]))  # the third step expands VP, which has two productions
    with pytest.raises(ValueError, match="must be in"):
        pcfg.replay(G, jnp.array([0, 7, 0]))
    with pytest.raises(ValueError, match="b_length must be in"):
        pcfg.levenshtein(np.zeros(3, int), 3, np.zeros(2, int), 5)
    with pytest.raises(ValueError, match="production logits must have shape"):
        pcfg.production_log_probs(jnp.zeros((6, 5)), G)
    with pytest.raises(ValueError, match="num_steps"):
        pcfg.sample_model(jax.random.PRNGKey(0), G.true_log_probs(), G, 0)
    with pytest.raises(ValueError, match="num_particles >= 2"):
        pcfg_study.make_chunk(small_config(), ["vimco"], 1)
    with pytest.raises(ValueError, match="unknown variant"):
        configs.get_config("pcfg:huge")


def test_config_variants_and_method_groups():
    cfg = configs.get_config("pcfg")
    assert cfg.methods == ("ws", "ww", "vimco", "reinforce") and cfg.num_particles == (2, 5, 10, 20)
    assert cfg.batch_size == 2 and cfg.num_runs == 10 and cfg.learning_rate == 1e-3
    assert pcfg_study.method_groups(cfg) == [["ws"], ["ww", "vimco", "reinforce"]]
    cfg.group_methods = False
    assert pcfg_study.method_groups(cfg) == [["ws"], ["ww"], ["vimco"], ["reinforce"]]
    for variant in configs.variants("pcfg"):
        c = configs.get_config(f"pcfg:{variant}")
        assert c.num_iterations % c.eval_every == 0


@pytest.mark.slow  # ~2 minutes on 2 busy cores: four compiles of the quick study
def test_quick_study_writes_results_and_figures(tmp_path):
    cfg = configs.get_config("pcfg:quick")
    results = pcfg_study.run(cfg, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert set(saved["runs"]) == {"ws/K2", "vimco/K2"}
    for entry in saved["runs"].values():
        lo, med, hi = entry["q_error_quartiles"]
        assert len(med) == cfg.num_iterations // cfg.eval_every + 1 and np.all(np.array(lo) <= np.array(hi))
        assert np.all(np.isfinite(entry["final_p_error"])) and len(entry["test_sentence_match_rate"]) == cfg.num_runs
    assert len(results["plots"]) == 3 and all(os.path.exists(p) for p in results["plots"])  # Fig. 8.4.1 ×2, 8.A.3
    # resume: a rerun trains nothing (the stored runs come back unchanged); another config is refused
    again = pcfg_study.run(cfg, str(tmp_path))
    assert again["runs"] == saved["runs"] and again["seconds"] < results["seconds"]
    # report (the script's --report): tabulates the stored runs' final medians, trains nothing
    report = pcfg_study.run(cfg, str(tmp_path), train=False)
    assert report["runs"] == saved["runs"] and report["seconds"] == again["seconds"]  # the training call's time
    ws_q = saved["runs"]["ws/K2"]["q_error_quartiles"][1][-1]
    assert f"| WS | 2 | {saved['runs']['ws/K2']['p_error_quartiles'][1][-1]:.4f} [" in report["table_markdown"]
    assert f"| {ws_q:.2f} [" in report["table_markdown"] and "| VIMCO | 2 |" in report["table_markdown"]
    cfg.num_particles = (3,)
    with pytest.raises(ValueError, match="nothing to report"):
        pcfg_study.run(cfg, str(tmp_path), train=False)
    cfg.num_particles = (2,)
    cfg.learning_rate = 3e-4
    with pytest.raises(ValueError, match="another config"):
        pcfg_study.run(cfg, str(tmp_path))
