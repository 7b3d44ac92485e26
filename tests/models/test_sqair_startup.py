"""SQAIR start-up options (``ocr_jax/models/sqair.py``, module docstring "Start-up"): one focused test per
``SQAIRConfig`` field, each checking values against a closed form, so that ignoring the option fails the test.
Tiny sizes (16 units, 16×16 frames, 6×6 glimpses, z_what_dim 3); every jitted function is compiled once."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ocr_jax.models.sqair import SQAIR, SQAIRInference, mlp_sqair_config, where_to_transform

N, H, DW, SIZE = 3, 16, 3, 16
B, K, T = 2, 2, 3
S_MIN = 0.01  # where_to_transform's smallest glimpse scale


def _config(**overrides):
    return mlp_sqair_config(
        hidden=H,
        image_shape=(SIZE, SIZE),
        glimpse_shape=(6, 6),
        z_what_dim=DW,
        max_objects=N,
        max_seq_len=T,
        **overrides,
    )


GENERATIVE = ("glimpse_decoder", "prior_rnn", "prior_init", "prior_pres", "prior_what", "prior_where", "disc_count")


def _init_one(model, name, key=jax.random.key(0)):
    """The initial parameters of network ``name`` (a submodule of SQAIRGenerative or SQAIRInference)."""
    return model.init(key)["generative" if name in GENERATIVE else "inference"][name]


def _apply(model, name, net_params, *inputs):
    """Network ``name`` alone, on its own parameters ``net_params``."""
    module = model.generative if name in GENERATIVE else model.inference
    return module.apply({"params": {name: net_params}}, *inputs, method=lambda m, *x: getattr(m, name)(*x))


def _input_width(net_params):
    """The input width of a head (an MLP_0 whose first layer is Dense_0)."""
    return net_params["MLP_0"]["Dense_0"]["kernel"].shape[0]


def _set_last(tree, path, bias):
    """Copy of a module's params where the Dense at ``path`` has a zero kernel and the given bias: its output is the
    constant ``bias`` whatever the input."""
    if not path:
        return dict(
            kernel=jnp.zeros_like(tree["kernel"]),
            bias=jnp.broadcast_to(jnp.asarray(bias, jnp.float32), tree["bias"].shape),
        )
    return dict(tree, **{path[0]: _set_last(tree[path[0]], path[1:], bias)})


def _force(params, group, name, bias):
    """Copy of the full params where network ``name``'s output layer returns the constant ``bias``."""
    net = params[group][name]
    path = ("MLP_0", "Dense_1") if "MLP_0" in net else ("Dense_1",) if "Dense_1" in net else ("Dense_0",)
    return dict(params, **{group: dict(params[group], **{name: _set_last(net, path, bias)})})


def _images():
    """[B, T, 16, 16] in [0, 1]: two bright squares moving right/down (tests/models/test_sqair.py's sequences)."""
    from tests.models.test_sqair import _moving_squares

    return _moving_squares()


def _normal_log_prob(x, loc, scale):
    x, loc, scale = (np.asarray(a, np.float64) for a in (x, loc, scale))
    return np.sum(-0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * np.log(2 * np.pi), axis=-1)


def _tiny_task(**overrides):
    """A SQAIRTask on 16×16 blob sequences with 8 units (the task-level tests below)."""
    import ml_collections

    from ocr_jax.tasks.sqair import SQAIRTask, default_model_config

    model = dict(hidden=8, z_what_dim=3, max_objects=2, glimpse_shape=(6, 6))
    model.update({k: v for k, v in overrides.items() if k in default_model_config()})
    task = {k: v for k, v in overrides.items() if k not in default_model_config()}
    return SQAIRTask(ml_collections.ConfigDict(dict(model=model, canvas_size=16, data="blobs", digit_size=8, **task)))


# --- 1. where_map ----------------------------------------------------------------------------------------------------


def test_where_map_tanh_bounds_shifts_linear_passes_them():
    raw = jnp.asarray([[3.0, -2.0, 50.0, -1e3], [0.0, 40.0, 0.3, -0.7], [-60.0, 1.5, 1e4, 2.0]])
    r = np.asarray(raw, np.float64)
    scale = S_MIN + (1 - S_MIN) / (1 + np.exp(-r[:, :2]))
    tanh = np.asarray(where_to_transform(raw, "sigmoid_tanh"))
    linear = np.asarray(where_to_transform(raw, "sigmoid_linear"))
    np.testing.assert_allclose(tanh[:, :2], scale, rtol=1e-6)
    np.testing.assert_allclose(linear[:, :2], scale, rtol=1e-6)
    np.testing.assert_allclose(tanh[:, 2:], np.tanh(r[:, 2:]), rtol=1e-6)
    assert np.all(np.abs(tanh[:, 2:]) <= 1.0)  # (float32 tanh of a huge value rounds to exactly ±1)
    np.testing.assert_array_equal(linear[:, 2:], raw[:, 2:])
    # The default is the official code's map, and the model applies its configured map.
    np.testing.assert_array_equal(where_to_transform(raw), tanh)
    np.testing.assert_array_equal(SQAIR(_config(where_map="sigmoid_linear")).to_transform(raw), linear)
    np.testing.assert_array_equal(SQAIR(_config()).to_transform(raw), tanh)
    with pytest.raises(ValueError, match="where_map"):
        where_to_transform(raw, "tanh")
    with pytest.raises(ValueError, match="where_map"):
        _config(where_map="sigmoid")


def test_shift_bound_lets_a_glimpse_centre_leave_the_canvas():
    """``shift_bound = b``: t = b·tanh(raw_t / b) — the official tanh at b = 1 (bit for bit), the identity near 0 for
    every b, and a centre up to b half-canvases from the middle (beyond the edge for b > 1); scales unchanged."""
    raw = jnp.asarray([[0.3, -1.0, 0.01, -0.02], [2.0, 0.5, 3.0, -4.0], [-1.0, 1.0, 40.0, -40.0]])
    r = np.asarray(raw, np.float64)
    official = np.asarray(where_to_transform(raw, "sigmoid_tanh", 1.0))
    np.testing.assert_array_equal(official, where_to_transform(raw))
    wide = np.asarray(where_to_transform(raw, "sigmoid_tanh", 2.0))
    np.testing.assert_allclose(wide[:, 2:], 2.0 * np.tanh(r[:, 2:] / 2.0), rtol=1e-6)
    np.testing.assert_array_equal(wide[:, :2], official[:, :2])
    np.testing.assert_allclose(wide[0, 2:], r[0, 2:], rtol=1e-3)  # the identity near 0
    assert np.all(np.abs(wide[1:, 2:]) > 1.0)  # off the canvas's centre range: the official map cannot get there
    assert np.all(np.abs(wide[:, 2:]) <= 2.0)
    np.testing.assert_array_equal(SQAIR(_config(shift_bound=2.0)).to_transform(raw), wide)
    # sigmoid_linear ignores the bound (its shift is raw_t).
    np.testing.assert_array_equal(where_to_transform(raw, "sigmoid_linear", 2.0)[:, 2:], raw[:, 2:])
    with pytest.raises(ValueError, match="shift_bound"):
        where_to_transform(raw, "sigmoid_tanh", 0.0)
    with pytest.raises(ValueError, match="shift_bound"):
        _config(shift_bound=-1.0)


def test_max_glimpse_scale_bounds_the_window_and_nothing_else():
    """``max_glimpse_scale = m``: s = s_min + (m − s_min)·sigmoid(raw_s) in [s_min, m]; shifts unchanged; m = 1 is the
    default map bit for bit; the model applies its configured bound; out-of-range bounds are refused."""
    raw = jnp.asarray([[3.0, -2.0, 0.5, -1.0], [0.0, 40.0, 3.0, -0.7], [-60.0, 1.5, 1e4, 2.0]])
    r = np.asarray(raw, np.float64)
    np.testing.assert_array_equal(where_to_transform(raw, "sigmoid_tanh", 1.0, 1.0), where_to_transform(raw))
    bounded = np.asarray(where_to_transform(raw, "sigmoid_tanh", 2.0, 0.5))
    np.testing.assert_allclose(bounded[:, :2], S_MIN + (0.5 - S_MIN) / (1 + np.exp(-r[:, :2])), rtol=1e-6)
    assert np.all(bounded[:, :2] <= 0.5) and np.all(bounded[:, :2] >= S_MIN)
    np.testing.assert_array_equal(bounded[:, 2:], where_to_transform(raw, "sigmoid_tanh", 2.0)[:, 2:])
    np.testing.assert_array_equal(SQAIR(_config(max_glimpse_scale=0.5, shift_bound=2.0)).to_transform(raw), bounded)
    for bad in (0.0, S_MIN, 1.2):
        with pytest.raises(ValueError, match="max_scale"):
            where_to_transform(raw, "sigmoid_tanh", 1.0, bad)
        with pytest.raises(ValueError, match="max_glimpse_scale"):
            _config(max_glimpse_scale=bad)


# --- 2. std_floor ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("floor", [1e-2, 0.037])
def test_std_floor_is_every_gaussian_heads_smallest_std(floor):
    model = SQAIR(_config(std_floor=floor))
    x = jax.random.normal(jax.random.key(1), (2, 64))
    for name in ("disc_where", "disc_what", "prop_where", "prop_what", "prior_what", "prior_where"):
        params = _init_one(model, name)
        last = params["MLP_0"]["Dense_1"]
        dim = last["bias"].shape[0] // 2
        bias = np.concatenate([np.asarray(last["bias"][:dim]), np.full(dim, -1e4, np.float32)])
        loc, scale = _apply(model, name, _set_last(params, ("MLP_0", "Dense_1"), bias), x[:, : _input_width(params)])
        np.testing.assert_allclose(scale, np.full((2, dim), floor), rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(loc, np.broadcast_to(bias[:dim], (2, dim)), rtol=1e-6, err_msg=name)


# --- 3. disc_head_kernel_scale ---------------------------------------------------------------------------------------


def test_disc_head_kernel_scale_shrinks_only_discs_output_kernels():
    key = jax.random.key(3)
    small = SQAIR(_config(disc_head_kernel_scale=0.1)).init(key)
    unit = SQAIR(_config(disc_head_kernel_scale=1.0)).init(key)
    scaled = [("inference", "disc_where"), ("inference", "disc_pres")]
    for group, name in scaled:
        a, b = small[group][name]["MLP_0"], unit[group][name]["MLP_0"]
        # Same key: the same truncated-normal draws, so the kernels (and their stds) are exactly in ratio 0.1.
        np.testing.assert_allclose(
            a["Dense_1"]["kernel"], 0.1 * np.asarray(b["Dense_1"]["kernel"]), rtol=1e-5, atol=1e-8
        )
        np.testing.assert_allclose(np.std(a["Dense_1"]["kernel"]) / np.std(b["Dense_1"]["kernel"]), 0.1, rtol=1e-4)
        jax.tree.map(np.testing.assert_array_equal, a["Dense_0"], b["Dense_0"])
        np.testing.assert_array_equal(a["Dense_1"]["bias"], b["Dense_1"]["bias"])
    # LeCun-normal times the scale: std ≈ scale / sqrt(fan_in) (128 draws: ~6% sampling error).
    k = np.asarray(unit["inference"]["disc_where"]["MLP_0"]["Dense_1"]["kernel"])
    assert abs(np.std(k) * np.sqrt(H) - 1.0) < 0.3
    for group in ("generative", "inference"):
        for name in unit[group]:
            if (group, name) not in scaled:
                jax.tree.map(np.testing.assert_array_equal, small[group][name], unit[group][name])


# --- 4. disc_init_scale ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "init_scale, max_scale, expected",
    [(0.4, 1.0, 0.4), (0.25, 1.0, 0.25), (None, 1.0, S_MIN + (1 - S_MIN) * 0.5), (0.4, 0.5, 0.4)],
)
def test_disc_init_scale_sets_the_initial_glimpse_scale(init_scale, max_scale, expected):
    model = SQAIR(_config(disc_init_scale=init_scale, max_glimpse_scale=max_scale))
    loc, _ = _apply(model, "disc_where", _init_one(model, "disc_where"), jnp.zeros((2, H)))
    transform = np.asarray(model.to_transform(loc))
    np.testing.assert_allclose(transform[:, :2], np.full((2, 2), expected), rtol=1e-5)
    np.testing.assert_array_equal(transform[:, 2:], 0.0)
    if init_scale is None:
        np.testing.assert_array_equal(loc, 0.0)
        np.testing.assert_allclose(expected, 0.505, rtol=1e-12)


@pytest.mark.parametrize("bad", [0.0, 0.005, S_MIN, 1.0, 1.5, -0.3])
def test_disc_init_scale_out_of_range_raises(bad):
    with pytest.raises(ValueError, match="disc_init_scale"):
        _config(disc_init_scale=bad)
    # It must also lie below the largest glimpse scale.
    with pytest.raises(ValueError, match="disc_init_scale"):
        _config(disc_init_scale=0.4, max_glimpse_scale=0.3)


# --- 5. disc_presence_logit_init -------------------------------------------------------------------------------------


def test_default_disc_presence_probability_is_0_8():
    model = SQAIR(_config())
    params = _init_one(model, "disc_pres")
    logit = _apply(model, "disc_pres", params, jnp.zeros((2, _input_width(params))))
    np.testing.assert_allclose(jax.nn.sigmoid(logit), [0.8, 0.8], atol=1e-4)
    # A different value moves it (so the default is not an accident of the initialisation).
    model = SQAIR(_config(disc_presence_logit_init=-2.0))
    np.testing.assert_allclose(
        _apply(model, "disc_pres", _init_one(model, "disc_pres"), jnp.zeros((1, H + DW))), [-2.0], rtol=1e-6
    )


# --- 6. presence_after_what ------------------------------------------------------------------------------------------


def test_presence_after_what_feeds_z_what_to_discs_presence():
    w = jax.random.normal(jax.random.key(4), (2, H))
    what = jax.random.normal(jax.random.key(5), (2, DW))

    def presence(model, params, what):
        return model.inference.apply({"params": params}, w, what, method=SQAIRInference.discovery_presence)

    after = SQAIR(_config(presence_after_what=True))
    params = after.init(jax.random.key(0))["inference"]
    assert params["disc_pres"]["MLP_0"]["Dense_0"]["kernel"].shape == (H + DW, H)
    a, b = presence(after, params, what), presence(after, params, what + 1.0)
    assert np.all(np.abs(np.asarray(a) - np.asarray(b)) > 1e-4)  # the logit depends on z_what
    np.testing.assert_allclose(
        a, _apply(after, "disc_pres", params["disc_pres"], jnp.concatenate([w, what], -1)), rtol=1e-6, atol=1e-7
    )
    before = SQAIR(_config(presence_after_what=False))
    params = before.init(jax.random.key(0))["inference"]
    assert params["disc_pres"]["MLP_0"]["Dense_0"]["kernel"].shape == (H, H)  # its first layer takes h alone
    np.testing.assert_array_equal(presence(before, params, what), presence(before, params, what + 1.0))
    np.testing.assert_allclose(
        presence(before, params, what), _apply(before, "disc_pres", params["disc_pres"], w), rtol=1e-6, atol=1e-7
    )


# --- 7-8. PROP: prop_update_scale and the gated z_what posterior -----------------------------------------------------

FLOOR = 1e-3  # std_floor of the PROP tests: the where posterior's std is driven to it, so z_where ≈ its mean
C_PROPOSAL = np.asarray([0.3, -0.5, 0.7, -0.2], np.float32)
C_WHERE = np.asarray([-0.4, 0.6, 0.25, -0.8], np.float32)


@pytest.fixture(scope="module")
def prop_setup():
    """Params with PROP's proposal MLP → C_PROPOSAL and prop_where → (C_WHERE, std FLOOR), PROP keeping every object;
    one jitted ``_propagate`` per prop_update_scale that also reports every z_where it extracts a glimpse at."""
    rng = np.random.default_rng(0)
    base = SQAIR(_config(std_floor=FLOOR))
    params = base.init(jax.random.key(0))
    params = _force(params, "inference", "proposal", C_PROPOSAL)
    params = _force(params, "inference", "prop_where", np.concatenate([C_WHERE, np.full(4, -1e4, np.float32)]))
    params = _force(params, "inference", "prop_pres", 50.0)
    state = dict(
        z_what=jnp.asarray(rng.normal(size=(N, DW)), jnp.float32),
        z_where=jnp.asarray(rng.normal(size=(N, 4)), jnp.float32),
        z_pres=jnp.ones((N,)),
        h_temporal=jnp.asarray(rng.normal(size=(N, H)), jnp.float32),
        h_prior=jnp.asarray(rng.normal(size=(N, H)), jnp.float32),
        # shift displacements only (scales are never extrapolated); used by the prop_velocity model alone
        where_velocity=jnp.asarray(np.concatenate([np.zeros((N, 2)), rng.normal(size=(N, 2))], -1), jnp.float32),
    )
    image = _images()[1, 1]
    models = {}
    for scale in (0.1, 1.0, "velocity"):
        velocity = scale == "velocity"
        model = SQAIR(_config(std_floor=FLOOR, prop_update_scale=0.1 if velocity else scale, prop_velocity=velocity))
        seen = []

        def to_transform(z_where, model=model, seen=seen):
            jax.debug.callback(lambda z: seen.append(np.asarray(z)), z_where, ordered=True)
            return where_to_transform(z_where, model.config.where_map)

        model.to_transform = to_transform
        models[scale] = (model, jax.jit(model._propagate), seen)
    return dict(params=params, state=state, image=image, models=models, key=jax.random.key(7))


def _glimpse_locations(seen):
    """The z_where of PROP's glimpses as ``to_transform`` saw them: (the N proposals, the N sampled z_where)."""
    rows = np.concatenate([np.reshape(z, (-1, 4)) for z in seen])
    assert rows.shape == (2 * N, 4), rows.shape
    return rows[:N], rows[N:]


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_prop_update_scale_scales_the_proposal_and_the_where_update(prop_setup, scale):
    s = prop_setup
    model, prop, seen = s["models"][scale]
    seen.clear()
    out = jax.device_get(prop(s["params"], s["image"], s["state"], s["key"]))
    jax.effects_barrier()
    prev = np.asarray(s["state"]["z_where"])
    # Each object extracts two glimpses: at the proposal (every object's at once, before the scan over objects),
    # then at the sampled z_where (in object order).
    proposals, sampled = _glimpse_locations(seen)
    np.testing.assert_allclose(proposals, prev + scale * C_PROPOSAL, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sampled, out["z_where"], rtol=1e-6, atol=1e-6)
    # The posterior mean is z_where_{t-1} + scale · c; its std is the floor, so the sample is within 5 stds of it.
    np.testing.assert_allclose(out["z_where"], prev + scale * C_WHERE, atol=5 * FLOOR)
    np.testing.assert_array_equal(out["z_pres"], 1.0)
    np.testing.assert_array_equal(out["where_velocity"], 0.0)  # prop_velocity off: nothing carried


def test_prop_velocity_extrapolates_the_proposal_and_the_where_posterior(prop_setup):
    """z_where_{t-1} + v_{t-1} + 0.1·f for the proposal and the posterior mean; the new v_t = z_where_t − z_where_{t-1}
    in the shift coordinates and 0 in the scales."""
    s = prop_setup
    model, prop, seen = s["models"]["velocity"]
    seen.clear()
    out = jax.device_get(prop(s["params"], s["image"], s["state"], s["key"]))
    jax.effects_barrier()
    prev, v = np.asarray(s["state"]["z_where"]), np.asarray(s["state"]["where_velocity"])
    assert np.abs(v[:, 2:]).min() > 1e-3  # a displacement to extrapolate
    proposals, sampled = _glimpse_locations(seen)
    np.testing.assert_allclose(proposals, prev + v + 0.1 * C_PROPOSAL, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sampled, out["z_where"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["z_where"], prev + v + 0.1 * C_WHERE, atol=5 * FLOOR)
    np.testing.assert_array_equal(out["where_velocity"][:, :2], 0.0)
    np.testing.assert_allclose(out["where_velocity"][:, 2:], out["z_where"][:, 2:] - prev[:, 2:], rtol=1e-6, atol=1e-6)


def test_prop_velocity_prior_and_scoring_path_agree_and_differ_from_the_official_prior():
    """With prop_velocity the propagation prior's where mean is extrapolated in inference, in generation and in the
    identity-matched scoring path (log_joint_terms) alike: their log p^P agree term by term; and on moving objects
    log p^P differs from the official prior's on the same trajectory (the option acts)."""
    images = jnp.asarray(_images())
    official, moving = SQAIR(_config()), SQAIR(_config(prop_velocity=True))
    params = _force(moving.init(jax.random.key(0)), "inference", "prop_pres", 50.0)  # keep every tracked object
    out = jax.device_get(jax.jit(lambda p, x, k: moving.infer(p, x, k, K))(params, images, jax.random.key(3)))
    score, score_official = jax.jit(moving.log_joint_terms), jax.jit(official.log_joint_terms)
    differs = False
    for b in range(B):
        for k in range(K):
            traj = (out["z_what"][b, k], out["z_where_raw"][b, k], out["z_pres"][b, k], out["ids"][b, k])
            terms = score(params, images[b], *traj)
            np.testing.assert_allclose(terms["log_p_prop"], out["log_p_prop"][b, k], rtol=1e-5, atol=1e-3)
            np.testing.assert_allclose(terms["log_p_disc"], out["log_p_disc"][b, k], rtol=1e-5, atol=1e-3)
            # frames 1 and 2 have no displacement yet; from frame 3 an object propagated twice has one
            np.testing.assert_allclose(
                score_official(params, images[b], *traj)["log_p_prop"][:2],
                terms["log_p_prop"][:2],
                rtol=1e-5,
                atol=1e-3,
            )
            differs |= bool(
                np.abs(score_official(params, images[b], *traj)["log_p_prop"][2] - terms["log_p_prop"][2]) > 1e-3
            )
    assert differs
    g = jax.device_get(jax.jit(lambda p, k: moving.generate(p, k, B, T))(params, jax.random.key(5)))
    for b in range(B):
        terms = score(params, images[b], g["z_what"][b], g["z_where_raw"][b], g["z_pres"][b], g["ids"][b])
        np.testing.assert_allclose(terms["log_p_prop"], g["log_p_prop"][b], rtol=1e-5, atol=1e-4)


def test_gated_prop_what_posterior(prop_setup):
    s = prop_setup
    model, prop, seen = s["models"][0.1]
    params = s["params"]
    # Gates with zero input: 0.9999·sigmoid(+1) (the "remember" bias).
    gates = _apply(model, "prop_what_gates", params["inference"]["prop_what_gates"], jnp.zeros((H,)))
    assert len(gates) == 3
    for g in gates:
        np.testing.assert_allclose(g, np.full(DW, 0.9999 / (1 + np.exp(-1.0))), rtol=1e-6)
    # Force the gates, DISC's glimpse head (μ_g, σ_g) and the temporal head (μ_T, σ_T) to constants.
    raw_gates = np.asarray([0.5, -0.3, 1.2, -1.0, 0.2, -2.0, 2.0, 0.7, -0.4], np.float32)  # (f, i, u) per dim
    mu_g, raw_g = np.asarray([0.5, -1.0, 2.0]), np.asarray([0.0, -1.0, 0.5])
    mu_t, raw_t = np.asarray([-0.3, 0.8, 0.1]), np.asarray([-0.5, 0.3, 1.0])
    params = _force(params, "inference", "prop_what_gates", raw_gates)
    params = _force(params, "inference", "disc_what", np.concatenate([mu_g, raw_g]))
    params = _force(params, "inference", "prop_what", np.concatenate([mu_t, raw_t]))
    out = jax.device_get(prop(params, s["image"], s["state"], s["key"]))
    keep, take, temporal = np.split(0.9999 / (1 + np.exp(-raw_gates.astype(np.float64))), 3)
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    sigma_g, sigma_t = softplus(raw_g + 0.5) + FLOOR, softplus(raw_t + 0.5) + FLOOR  # GaussianHead's scale_bias 0.5
    prev_what = np.asarray(s["state"]["z_what"], np.float64)
    loc = keep * prev_what + (1 - take) * mu_g + (1 - temporal) * mu_t
    scale = (1 - take) * sigma_g + (1 - temporal) * sigma_t
    eps = (out["z_what"] - loc) / scale
    assert np.all(np.abs(eps) < 5.0), eps
    # log q of each object = log q(pres=1) + log N(z_where; mean, FLOOR) + log N(z_what; loc, scale): holds only
    # with the closed-form loc and scale.
    where_loc = np.asarray(s["state"]["z_where"], np.float64) + 0.1 * C_WHERE
    expected = (
        np.log(1 / (1 + np.exp(-50.0)))
        + _normal_log_prob(out["z_where"], where_loc, FLOOR)
        + _normal_log_prob(out["z_what"], loc, scale)
    )
    np.testing.assert_allclose(out["log_q"], expected, rtol=1e-4, atol=5e-3)
    # "direct": one head on everything, no gates; an unknown name raises.
    shapes = jax.eval_shape(SQAIR(_config(prop_what="direct")).init, jax.random.key(0))
    assert "prop_what_gates" not in shapes["inference"] and "prop_what_gates" in params["inference"]
    assert shapes["inference"]["prop_what"]["MLP_0"]["Dense_0"]["kernel"].shape == (DW + H + H + H, H)
    with pytest.raises(ValueError, match="prop_what"):
        _config(prop_what="lstm")


# --- 9-10. inference: scan_unroll and frame 1 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def infer_setup():
    model = SQAIR(_config())
    params = model.init(jax.random.key(0))
    params = _force(params, "inference", "disc_pres", 2.0)  # most objects present
    calls = []
    propagate = model._propagate

    def counting_propagate(*args, **kwargs):
        calls.append(1)
        return propagate(*args, **kwargs)

    model._propagate = counting_propagate  # counts traces of PROP
    infer = jax.jit(lambda p, x, k: model.infer(p, x, k, K))
    key = jax.random.key(42)
    images = _images()
    out = jax.device_get(infer(params, images, key))
    return dict(
        model=model, params=params, infer=infer, key=key, images=images, out=out, calls=calls, prop_traces=len(calls)
    )


def _scans(jaxpr, found):
    """(length, unroll) of every scan in a jaxpr, nested ones included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            found.append((eqn.params["length"], eqn.params["unroll"]))
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                _scans(getattr(inner, "jaxpr", inner), found)
    return found


@pytest.mark.slow  # ≈ 26 s (compiling the unrolled program); a check of the benchmark's FLOP-counting copy
def test_scan_unroll_gives_the_same_inference(infer_setup):
    """The unrolled model's particle (``infer_sequence`` with ``particle_key``: infer's code path for one particle,
    whose compile is half of the vmapped infer's) equals the rolled ``infer``'s particle."""
    s = infer_setup
    model = SQAIR(dataclasses.replace(s["model"].config, scan_unroll=True))
    traced = jax.jit(model.infer_sequence).trace(s["params"], s["images"][0], s["key"])
    scans = _scans(traced.jaxpr.jaxpr, [])
    # Every scan (frame 1's DISC, the frames 2..T, PROP and DISC inside them) is unrolled completely.
    assert len(scans) == 4 and all(unroll == length for length, unroll in scans), scans
    single = traced.lower().compile()
    a = s["out"]
    assert a["z_pres"].sum() > 0 and a["propagated"].any()  # a non-trivial comparison
    for b in range(B):
        for k in range(K):
            out, log_w = jax.device_get(single(s["params"], s["images"][b], model.particle_key(s["key"], b, k)))
            for name in ("ids", "z_pres", "propagated", "num_propagated", "num_discovered"):
                np.testing.assert_array_equal(out[name], a[name][b, k], err_msg=name)
            for name in ("z_where", "z_where_raw", "z_what", "log_q_prop", "log_q_disc", "log_p_prop", "log_p_disc"):
                np.testing.assert_allclose(out[name], a[name][b, k], rtol=1e-5, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(log_w, a["log_weight"][b, k], rtol=1e-5)


def test_frame_one_runs_disc_only(infer_setup):
    s = infer_setup
    assert s["prop_traces"] == 1  # the 3-frame run traced PROP once: in the scan over frames 2..T
    one = jax.device_get(s["infer"](s["params"], s["images"][:, :1], s["key"]))
    assert len(s["calls"]) == s["prop_traces"]  # the 1-frame run never traced PROP
    a = s["out"]
    assert a["z_pres"][:, :, 0].sum() > 0
    for name, value in one.items():
        if name == "log_weight":
            continue
        assert value.shape[2] == 1, name
        if value.dtype.kind in "biu":
            np.testing.assert_array_equal(value[:, :, 0], a[name][:, :, 0], err_msg=name)
        else:
            np.testing.assert_allclose(value[:, :, 0], a[name][:, :, 0], rtol=1e-5, atol=1e-5, err_msg=name)
    per_step = (one["log_likelihood"] + one["log_p_disc"] + one["log_p_prop"] - one["log_q_disc"] - one["log_q_prop"])[
        :, :, 0
    ]
    np.testing.assert_allclose(one["log_weight"], per_step, rtol=1e-6)
    for out in (one, a):
        np.testing.assert_array_equal(out["log_p_prop"][:, :, 0], 0.0)
        np.testing.assert_array_equal(out["log_q_prop"][:, :, 0], 0.0)
        np.testing.assert_array_equal(out["num_propagated"][:, :, 0], 0)
        assert not out["propagated"][:, :, 0].any()


# --- 11. disc_later_presence_bias ------------------------------------------------------------------------------------


def test_disc_later_presence_bias_acts_after_the_first_frame_only():
    """With PROP forgetting everything and DISC wanting to discover (logit +3), a bias of −50 after frame 1 leaves
    frame 1 unchanged and stops every discovery in later frames; 0 leaves later discoveries possible."""
    outs = {}
    for bias in (0.0, -50.0):
        model = SQAIR(_config(disc_later_presence_bias=bias))
        params = model.init(jax.random.key(0))
        params = _force(params, "inference", "prop_pres", -50.0)
        params = _force(params, "inference", "disc_pres", 3.0)
        outs[bias] = jax.device_get(
            jax.jit(lambda p, x, k: model.infer(p, x, k, 4))(params, _images(), jax.random.key(1))
        )
    np.testing.assert_array_equal(outs[-50.0]["z_pres"][:, :, 0], outs[0.0]["z_pres"][:, :, 0])
    assert outs[0.0]["num_discovered"][:, :, 1:].sum() > 0
    np.testing.assert_array_equal(outs[-50.0]["num_discovered"][:, :, 1:], 0)
    assert outs[-50.0]["num_discovered"][:, :, 0].sum() > 0


def test_minus_inf_closes_discovery_after_the_first_frame_where_a_finite_bias_is_outgrown():
    """DISC's presence network saturated at +100 (as an unbounded logit can grow, run sqair_short_velocity_seed2):
    an offset of −50 after frame 1 no longer stops discovery there, −inf does, exactly — frame 1 unchanged, no
    discovery and no DISC presence term after it, finite gradients. NaN and +inf are refused."""
    model = SQAIR(_config())
    params = _force(model.init(jax.random.key(0)), "inference", "prop_pres", -50.0)
    params = _force(params, "inference", "disc_pres", 100.0)
    infer = jax.jit(lambda p, x, k, b: model.infer(p, x, k, 4, disc_later_presence_bias=b))
    outs = {
        b: jax.device_get(infer(params, _images(), jax.random.key(1), jnp.float32(b))) for b in (0.0, -50.0, -np.inf)
    }
    assert outs[-50.0]["num_discovered"][:, :, 1:].sum() > 0
    np.testing.assert_array_equal(outs[-np.inf]["num_discovered"][:, :, 1:], 0)
    np.testing.assert_array_equal(outs[-np.inf]["z_pres"][:, :, 0], outs[0.0]["z_pres"][:, :, 0])
    np.testing.assert_array_equal(outs[-np.inf]["log_q_pres"][:, :, 0], outs[0.0]["log_q_pres"][:, :, 0])
    assert np.isfinite(outs[-np.inf]["log_weight"]).all()

    def objective(p):
        out = model.infer(p, _images(), jax.random.key(1), 4, disc_later_presence_bias=jnp.float32(-np.inf))
        return jnp.sum(out["log_weight"]) + jnp.sum(out["log_q_pres"])

    grads = jax.grad(objective)(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    closed = SQAIR(_config(disc_later_presence_bias=-np.inf))
    out = jax.device_get(jax.jit(lambda p, x, k: closed.infer(p, x, k, 4))(params, _images(), jax.random.key(1)))
    np.testing.assert_array_equal(out["z_pres"], outs[-np.inf]["z_pres"])
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="disc_later_presence_bias"):
            _config(disc_later_presence_bias=bad)
        with pytest.raises(ValueError, match="disc_later_presence_bias"):
            model.infer(params, _images(), jax.random.key(1), 1, disc_later_presence_bias=jnp.float32(bad))


def test_disc_presence_logit_bound_keeps_every_object_optional():
    """disc_presence_logit_bound = b: DISC's presence logit is b·tanh(logit / b). With its network saturated (logit
    +50), b = 2 leaves each object out with probability sigmoid(−2): frame 1's log q of the presence path is
    n·log σ(2) + [n < N]·log σ(−2) for the n objects found. Near 0 the bound is the identity, b = 0 leaves the
    logit unchanged; a negative bound raises."""
    from ocr_jax.models.sqair import bound_logit

    x = jnp.asarray([-100.0, -0.01, 0.0, 0.01, 100.0])
    np.testing.assert_allclose(bound_logit(x, 0.0), x)
    np.testing.assert_allclose(bound_logit(x, 3.0), [-3.0, -0.01, 0.0, 0.01, 3.0], atol=1e-6)
    model = SQAIR(_config(disc_presence_logit_bound=2.0))
    params = _force(model.init(jax.random.key(0)), "inference", "disc_pres", 50.0)
    out = jax.device_get(jax.jit(lambda p, x, k: model.infer(p, x, k, 16))(params, _images(), jax.random.key(1)))
    n = out["num_discovered"][:, :, 0]
    assert (n < N).any() and (n == N).any()
    log_sig = lambda v: -np.log1p(np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(
        out["log_q_pres"][:, :, 0], n * log_sig(2.0) + (n < N) * log_sig(-2.0), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="disc_presence_logit_bound"):
        _config(disc_presence_logit_bound=-1.0)


@pytest.mark.parametrize("frames", ["all", "first"])
def test_disc_presence_bound_frames_chooses_where_the_bound_acts(frames):
    """DISC with its presence network saturated (logit +50), nothing propagated, bound b = 2: in frame 1 the presence
    log q of a step is log σ(±2) under either setting; in a later frame it is log σ(±2) with "all" and ≈ 0 (every step
    present) with "first". An unknown setting raises."""
    model = SQAIR(_config(disc_presence_logit_bound=2.0, disc_presence_bound_frames=frames))
    params = _force(model.init(jax.random.key(0)), "inference", "disc_pres", 50.0)
    image = jnp.asarray(_images()[0, 0])
    projection = model.encode_images(params, image)
    empty = model._empty_state(params)
    log_sig = lambda v: -np.log1p(np.exp(-v))  # noqa: E731

    def disc(is_first, key):
        return model._discover(params, image, projection, empty, jnp.int32(0), key, is_first=is_first)

    keys = jax.random.split(jax.random.key(5), 64)
    for is_first in (True, False):
        out = jax.device_get(jax.jit(jax.vmap(lambda k, f=is_first: disc(jnp.asarray(f), k)))(keys))
        pres, log_q = out["z_pres"], out["log_q_pres"]  # [keys, N]; a step after an absent one is not allowed
        allowed = np.concatenate([np.ones_like(pres[:, :1]), np.cumprod(pres, -1)[:, :-1]], -1)
        if is_first or frames == "all":
            expected = allowed * np.where(pres > 0, log_sig(2.0), log_sig(-2.0))
            assert (pres[:, 0] == 0).any()  # some particle leaves an object out
        else:
            expected = np.zeros_like(log_q)
            np.testing.assert_array_equal(pres, 1.0)
        np.testing.assert_allclose(log_q, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="disc_presence_bound_frames"):
        _config(disc_presence_bound_frames="later")


def test_prop_presence_logit_bound_lets_every_particle_lose_a_tracked_object(prop_setup):
    """prop_presence_logit_bound = b: PROP's presence logit is b·tanh(logit / b). With its network saturated (logit
    +50, as in ``prop_setup``), b = 2 keeps each alive object with probability sigmoid(2) = 0.88: over 400 draws the
    kept fraction is within 4 standard errors of it, and each object's log q of presence is log σ(±2); without the
    bound every object is kept. A negative bound raises."""
    s = prop_setup
    keys = jax.random.split(jax.random.key(3), 400)
    kept = {}
    for b in (0.0, 2.0):
        model = SQAIR(_config(std_floor=FLOOR, prop_presence_logit_bound=b))
        run = jax.jit(jax.vmap(lambda k, m=model: m._propagate(s["params"], s["image"], s["state"], k)))
        out = jax.device_get(run(keys))
        kept[b] = out["z_pres"]
        if b:
            log_sig = lambda v: -np.log1p(np.exp(-v))  # noqa: E731
            expected = np.where(out["z_pres"] > 0, log_sig(b), log_sig(-b))
            np.testing.assert_allclose(out["log_q_pres"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kept[0.0], 1.0)
    p = 1.0 / (1.0 + np.exp(-2.0))
    se = np.sqrt(p * (1 - p) / kept[2.0].size)
    assert abs(kept[2.0].mean() - p) < 4 * se
    with pytest.raises(ValueError, match="prop_presence_logit_bound"):
        _config(prop_presence_logit_bound=-1.0)


def test_disc_suppression_schedule_of_the_task():
    """SQAIRTask.disc_later_bias: the suppression bias during the first disc_suppression_steps steps, the model's own
    offset after; evaluations use the bias of the step they evaluate."""

    task = _tiny_task(
        num_frames=3,
        start_length=1,
        disc_suppression_steps=100,
        disc_suppression_bias=-30.0,
        disc_later_presence_bias=-1.5,
    )
    np.testing.assert_allclose([float(task.disc_later_bias(s)) for s in (0, 99, 100, 5000)], [-30, -30, -1.5, -1.5])
    np.testing.assert_allclose(jax.jit(task.disc_later_bias)(jnp.asarray(99)), -30.0)
    assert float(task.disc_later_bias(task.eval_step)) == -1.5  # default: the trained model, no suppression
    closed = _tiny_task(num_frames=3, start_length=1, disc_suppression_steps=100)  # default bias: −inf, closed
    assert [float(closed.disc_later_bias(s)) for s in (0, 99, 100)] == [-np.inf, -np.inf, 0.0]
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match="disc_suppression_bias"):
            _tiny_task(num_frames=3, start_length=1, disc_suppression_bias=bad)


def test_first_frame_continue_prob_is_a_fixed_truncated_geometric_count_prior():
    """ρ > 0: log p(D_1 = n) = n log ρ − log Σ_{m ≤ N} ρ^m in frame 1 (and over {0..N − P} when P are propagated);
    later frames keep the learned table; 0 keeps the table in frame 1 too; ρ outside [0, 1) raises."""
    rho = 0.01
    model = SQAIR(_config(first_frame_continue_prob=rho))
    learned = SQAIR(_config())
    params = model.init(jax.random.key(0))
    norm = np.log(sum(rho**m for m in range(N + 1)))
    for n in range(N + 1):
        np.testing.assert_allclose(model._disc_count_log_prob(params, True, 0, n), n * np.log(rho) - norm, rtol=1e-5)
        np.testing.assert_allclose(
            model._disc_count_log_prob(params, False, 0, n),
            learned._disc_count_log_prob(params, False, 0, n),
            rtol=1e-6,
        )
        np.testing.assert_allclose(learned._disc_count_log_prob(params, True, 0, n), -np.log(N + 1), rtol=1e-5)
    norm1 = np.log(sum(rho**m for m in range(N)))  # one object propagated: D_1 ∈ {0..N − 1}
    np.testing.assert_allclose(model._disc_count_log_prob(params, True, 1, 1), np.log(rho) - norm1, rtol=1e-5)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="first_frame_continue_prob"):
            _config(first_frame_continue_prob=bad)


def test_count_penalty_schedule_and_objective():
    """SQAIRTask.count_penalty: 0 before count_penalty_start, then linear to count_penalty over count_penalty_ramp
    steps. The training surrogate is VIMCO on log p − λ·Σ_t Σ_i z_pres (the same particles), or − λ·Σ_t D_t when only
    discovered objects pay, while the logged IWAE bound stays the model's own; bad settings raise."""
    from ocr_jax import objectives

    base = dict(num_frames=2, start_length=2, num_particles=3)
    task = _tiny_task(**base, count_penalty=4.0, count_penalty_start=100, count_penalty_ramp=50)
    np.testing.assert_allclose([float(task.count_penalty(s)) for s in (0, 100, 125, 150, 10_000)], [0, 0, 2, 4, 4])
    np.testing.assert_allclose(jax.jit(task.count_penalty)(jnp.asarray(125)), 2.0)
    step_at_once = _tiny_task(**base, count_penalty=3.0, count_penalty_start=10)
    np.testing.assert_allclose([float(step_at_once.count_penalty(s)) for s in (9, 10)], [0.0, 3.0])

    frames = (np.asarray(_images()[:, :2]) * 255).astype(np.uint8)
    params, _ = task.init(jax.random.key(0), None)
    key = jax.random.key(1)
    surrogates, (metrics, _) = task.loss(params, {}, {"frames": frames}, key, 10_000)
    log_p, log_q_reparam, log_q_score, _, out = task.per_particle_terms(params, frames, key, 10_000)
    objects = np.asarray(out["z_pres"]).sum(axis=(-2, -1))
    assert objects.max() > 0  # the penalty has something to charge
    penalised = objectives.vimco(log_p - 4.0 * objects, log_q_reparam, log_q_score)
    np.testing.assert_allclose(surrogates["inference"], penalised.theta / 2, rtol=1e-5)
    plain = objectives.vimco(log_p, log_q_reparam, log_q_score)
    np.testing.assert_allclose(metrics["iwae"], plain.bound, rtol=1e-5)
    assert float(metrics["count_penalty"]) == 4.0
    # "discovered": each object pays once, in the frame DISC finds it (Σ_t D_t), not in every frame it is kept.
    from ocr_jax.tasks.sqair import charged_objects

    discovered = np.asarray(charged_objects(out, "discovered"))
    np.testing.assert_array_equal(discovered, np.asarray(out["num_discovered"]).sum(-1))
    np.testing.assert_array_equal(np.asarray(charged_objects(out, "present")), objects)
    assert discovered.max() > 0 and (discovered <= objects).all() and (discovered < objects).any()
    with pytest.raises(ValueError, match="count_penalty"):
        _tiny_task(**base, count_penalty=-1.0)
    with pytest.raises(ValueError, match="count_penalty_objects"):
        _tiny_task(**base, count_penalty_objects="kept")


# NVIL's and wake-wake's wiring is checked through the interface (tests/estimators/test_estimators.py) and on AIR
# (tests/tasks/test_air.py); on SQAIR (30 s each to compile) it runs with -m slow, as do 200 CLI steps with each
# estimator (tests/tasks/test_sqair_estimators_cli.py).
@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["nvil", "ww"])
def test_sqair_trains_with_other_estimators(estimator):
    """The estimator interface reaches SQAIR: NVIL adds a baseline group b_ψ(x) (trained by its regression loss,
    keeping running statistics in model_state), wake-wake gives θ and φ different surrogates; every group gets a
    finite, non-zero gradient. A model that cannot provide an estimator's terms is refused at construction."""
    import ml_collections

    from ocr_jax.tasks.sqair import SQAIRTask

    task = _tiny_task(num_frames=2, start_length=2, num_particles=3, estimator=estimator, baseline_hidden=4)
    frames = (np.asarray(_images()[:, :2]) * 255).astype(np.uint8)
    params, model_state = task.init(jax.random.key(0), None)
    groups = {"generative", "inference"} | ({"baseline"} if estimator == "nvil" else set())
    assert set(params) == groups

    def group_loss(p, group):
        surrogates, (metrics, new_state) = task.loss(p, model_state, {"frames": frames}, jax.random.key(1), 10)
        return surrogates[group], (surrogates, new_state)

    @jax.jit  # one compile for every group's gradient
    def group_gradients(p):
        grads = {g: jax.grad(group_loss, has_aux=True)(p, g) for g in sorted(groups)}
        return {g: grads[g][0][g] for g in grads}, grads[sorted(groups)[0]][1]

    grads, (surrogates, new_state) = group_gradients(params)
    assert set(surrogates) == groups
    for group in groups:
        norm = optax_global_norm(grads[group])
        assert np.isfinite(norm) and norm > 0, (estimator, group)
    if estimator == "nvil":
        assert int(new_state["estimator"].count) == 1
    else:
        assert model_state == {}
        assert not np.allclose(surrogates["generative"], surrogates["inference"])  # θ and φ follow different targets
    with pytest.raises(ValueError, match="'ws' needs log_q_sleep, which SQAIR does not provide"):
        SQAIRTask(ml_collections.ConfigDict(dict(data="blobs", estimator="ws")))


def optax_global_norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(a))) for a in jax.tree.leaves(tree))))


def test_task_config_names_model_options_under_model_and_refuses_unknown_ones():
    """The model's options live under ``task_config.model`` (as AIR's); a model option at the top level (the layout
    before) or a misspelt one is an error that says where it belongs, not an option silently ignored."""
    import ml_collections

    from ocr_jax.tasks.sqair import SQAIRTask, default_task_config, model_config

    cfg = default_task_config()
    cfg.canvas_size, cfg.num_frames = 24, 4
    cfg.model.update(hidden=12, glimpse_shape=(8, 6), max_objects=2)
    c = model_config(cfg)
    assert (c.image_shape, c.max_seq_len, c.hidden, c.glimpse_shape, c.max_objects) == ((24, 24), 4, 12, (8, 6), 2)
    with pytest.raises(ValueError, match=r"unknown SQAIR task options \['hidden'\].*task_config.model.hidden"):
        SQAIRTask(ml_collections.ConfigDict(dict(data="blobs", hidden=8)))
    with pytest.raises(ValueError, match=r"unknown SQAIR task options \['hiden'\]"):
        SQAIRTask(ml_collections.ConfigDict(dict(data="blobs", hiden=8)))
    cfg.model.hiden = 8
    with pytest.raises(ValueError, match=r"unknown SQAIR model options \['hiden'\] in task_config.model"):
        model_config(cfg)
