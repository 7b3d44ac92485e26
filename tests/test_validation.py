"""Inputs checked where users call (issue #18): the public entry points of AIR, SQAIR and ocr_jax.api reject bad
images/frames, particle and sample counts, keys and configs through one module (ocr_jax.validation) with messages
that say what was received; old-style PRNG keys work everywhere; estimators refuse K = 0. Each test fails if the
check it names is removed. Error cases need no parameters (the checks run before any computation); only the key
equivalence test initialises and runs a (tiny) model."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ocr_jax import api, objectives, validation
from ocr_jax.models.air import AIR, AIRConfig, validate_images
from ocr_jax.models.sqair import SQAIR, SQAIRConfig, mlp_sqair_config
from ocr_jax.tasks import air as air_task

SIZE, T_MAX = 8, 2
AIR_TINY = dict(
    canvas_shape=(SIZE, SIZE),
    glimpse_shape=(4, 4),
    max_steps=1,
    z_what_dim=2,
    rnn_hidden=4,
    image_encoder="raw",
    glimpse_encoder_hidden=(4,),
    glimpse_decoder_hidden=(4,),
    baseline_hidden=(4,),
)
AIR_MODEL = AIR(AIRConfig(**AIR_TINY))
SQAIR_MODEL = SQAIR(
    mlp_sqair_config(
        hidden=4, image_shape=(SIZE, SIZE), glimpse_shape=(4, 4), z_what_dim=2, max_objects=1, max_seq_len=T_MAX
    )
)
KEY = jax.random.key(0)


def _run(task_name):
    """An api.Run without parameters: every api check runs before the parameters are used."""
    model = AIR_MODEL if task_name == "air" else SQAIR_MODEL
    return api.Run(
        config=ml_collections.ConfigDict({"task": task_name}),
        task_name=task_name,
        model=model,
        params=None,
        step=0,
        task=None,
    )


# Entry points taking images [B, H, W] (AIR) or frames [B, T, H, W] (SQAIR); params are never reached.
ENTRY_POINTS = {
    "AIR.infer": ("air", lambda x: AIR_MODEL.infer(None, x, KEY, num_particles=2)),
    "AIR.reconstruct": ("air", lambda x: AIR_MODEL.reconstruct(None, x, KEY)),
    "AIR.init": ("air", lambda x: AIR_MODEL.init(KEY, x)),
    "air.validate_images": ("air", lambda x: validate_images(x, (SIZE, SIZE))),
    "SQAIR.infer": ("sqair", lambda x: SQAIR_MODEL.infer(None, x, KEY, 2)),
    "SQAIR.conditional_generate": ("sqair", lambda x: SQAIR_MODEL.conditional_generate(None, x, KEY, 1)),
    "SQAIR.validate_sequence": ("sqair", SQAIR_MODEL.validate_sequence),
    "api.infer_images": ("air", lambda x: api.infer_images(_run("air"), x)),
    "api.infer_sequences": ("sqair", lambda x: api.infer_sequences(_run("sqair"), x)),
}


def _good(kind):
    shape = (2, SIZE, SIZE) if kind == "air" else (2, T_MAX, SIZE, SIZE)
    return np.random.default_rng(0).random(shape).astype(np.float32)


def _bad(case, kind):
    x = _good(kind)
    if case == "pixels_0_255":  # the fault probe: [0, 255] floats were accepted by AIR.infer
        return x * 255
    if case == "pixels_minus_1_0":  # the fault probe: [-1, 0]
        return x - 1
    if case == "nan":
        x.reshape(-1)[5] = np.nan
        return x
    if case == "inf":
        x.reshape(-1)[-1] = np.inf
        return x
    if case == "uint8":
        return (x * 255).astype(np.uint8)
    if case == "int32":
        return (x * 255).astype(np.int32)
    if case == "bool":
        return x > 0.5
    if case == "rank":
        return x[0]
    if case == "strings":
        return [["a"] * SIZE] * SIZE
    if case == "frame_size":
        return x[..., :-1]
    if case == "empty_batch":  # the fault probe: crashed deep inside
        return x[:0]
    if case == "no_frames":
        return x[:, :0]
    if case == "too_many_frames":
        return np.concatenate([x, x[:, :1]], axis=1)
    raise AssertionError(case)


BAD_FRAMES = [
    ("pixels_0_255", r"must lie in \[0, 1\]; got values in \[.*254.*\] \(divide 0\.\.255 values by 255"),
    ("pixels_minus_1_0", r"must lie in \[0, 1\]; got values in \[-0\.9.*\]$"),
    ("nan", r"contain 1 NaN/inf values"),
    ("inf", r"contain 1 NaN/inf values"),
    ("uint8", r"must be floating point in \[0, 1\]; got dtype uint8: divide 0\.\.255 .* by 255"),
    ("int32", r"got dtype int32"),
    ("bool", r"got dtype bool"),
    ("rank", r"must have shape \[batch, .*height, width\] \(rank \d\); got shape"),
    ("frame_size", rf"must be {SIZE}x{SIZE} pixels \(the model's frame size, .*\); got {SIZE}x{SIZE - 1}"),
    ("empty_batch", r"empty batch .* \(batch size 0"),
    ("no_frames", r"no time steps"),
    ("too_many_frames", rf"have {T_MAX + 1} time steps but this model handles at most max_seq_len={T_MAX}"),
]


@pytest.mark.parametrize(
    "entry, case, match",
    [
        (entry, case, match)
        for entry, (kind, _) in ENTRY_POINTS.items()
        for case, match in BAD_FRAMES
        if not (kind == "air" and case in ("no_frames", "too_many_frames"))
        and not (entry.startswith("api.") and case == "uint8")
    ],
)  # the API converts uint8 (test below)
def test_bad_images_and_frames_raise_value_error(entry, case, match):
    kind, call = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=match):
        call(_bad(case, kind))


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_non_numeric_images_raise_type_error(entry):
    kind, call = ENTRY_POINTS[entry]
    with pytest.raises(TypeError, match=r"must be a numeric array \[batch, .*\]; got list of dtype <U1"):
        call(_bad("strings", kind))


def test_sqair_infer_sequence_checks_one_sequence():
    x = _good("sqair")[0]  # [time, H, W]
    with pytest.raises(ValueError, match=rf"have {T_MAX + 1} time steps .* max_seq_len={T_MAX}"):
        SQAIR_MODEL.infer_sequence(None, np.concatenate([x, x[:1]]), KEY)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        SQAIR_MODEL.infer_sequence(None, x * 255, KEY)
    with pytest.raises(TypeError, match=f"key must be {re.escape('jax.random.key(seed)')}"):
        SQAIR_MODEL.infer_sequence(None, x, 0)


def test_api_converts_uint8_the_models_reject_it():
    x = (_good("sqair") * 255).astype(np.uint8)
    out = validation.check_frames(
        x,
        name="frames",
        axes=("batch", "time", "height", "width"),
        frame_shape=(SIZE, SIZE),
        frame_source="test",
        uint8="convert",
    )
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x.astype(np.float32) / np.float32(255))
    with pytest.raises(ValueError, match="divide"):
        SQAIR_MODEL.infer(None, x, KEY)


def test_values_are_not_checked_under_tracing_but_shapes_are():
    """Under jit/eval_shape the values are unknown: out-of-range frames trace fine; a wrong shape or K still fails."""
    params = jax.eval_shape(AIR_MODEL.init, KEY, jax.ShapeDtypeStruct((1, SIZE, SIZE), jnp.float32))
    bad_values = _bad("pixels_0_255", "air")
    out = jax.eval_shape(lambda p, x: AIR_MODEL.infer(p, x, KEY, num_particles=2), params, bad_values)
    assert out.log_likelihood.shape == (2, 2)
    with pytest.raises(ValueError, match="pixels"):
        jax.eval_shape(lambda p, x: AIR_MODEL.infer(p, x, KEY), params, _bad("frame_size", "air"))
    with pytest.raises(ValueError, match="num_particles"):
        jax.eval_shape(lambda p, x: AIR_MODEL.infer(p, x, KEY, num_particles=0), params, bad_values)
    with pytest.raises(ValueError, match="max_seq_len"):
        jax.eval_shape(lambda x: SQAIR_MODEL.infer(None, x, KEY), _bad("too_many_frames", "sqair"))


# ---- counts ---------------------------------------------------------------------------------------------------------

BAD_COUNTS = {
    "AIR.infer": lambda n: AIR_MODEL.infer(None, _good("air"), KEY, num_particles=n),
    "AIR.reconstruct": lambda n: AIR_MODEL.reconstruct(None, _good("air"), KEY, num_particles=n),
    "AIR.generate": lambda n: AIR_MODEL.generate(None, KEY, n),
    "SQAIR.infer": lambda n: SQAIR_MODEL.infer(None, _good("sqair"), KEY, n),
    "SQAIR.generate(num_sequences)": lambda n: SQAIR_MODEL.generate(None, KEY, n, 1),
    "SQAIR.generate(num_steps)": lambda n: SQAIR_MODEL.generate(None, KEY, 1, n),
    "api.infer_images(num_particles)": lambda n: api.infer_images(_run("air"), _good("air"), num_particles=n),
    "api.infer_sequences(batch_size)": lambda n: api.infer_sequences(_run("sqair"), _good("sqair"), batch_size=n),
}


@pytest.mark.parametrize("entry", BAD_COUNTS)
def test_counts_must_be_ints_of_at_least_one(entry):
    call = BAD_COUNTS[entry]
    for zero in (0, -3):  # the fault probe: K = 0 returned empty arrays
        with pytest.raises(ValueError, match=rf"must be an int >= 1; got {zero}"):
            call(zero)
    for not_int in (2.0, True, np.ones(())):
        with pytest.raises(TypeError, match="must be a Python int >= 1; got"):
            call(not_int)


def test_conditional_generate_allows_zero_more_steps_but_not_negative():
    with pytest.raises(ValueError, match=r"num_steps must be an int >= 0; got -1"):
        SQAIR_MODEL.conditional_generate(None, _good("sqair"), KEY, -1)


def test_air_continue_prob_and_infer_with_keys_shapes():
    x = _good("air")
    with pytest.raises(ValueError, match=r"continue_prob values must lie in \[0, 1\]; got values in \[1.5, 1.5\]"):
        AIR_MODEL.infer(None, x, KEY, continue_prob=1.5)
    with pytest.raises(ValueError, match=r"continue_prob must be a scalar or have shape \[max_steps\]"):
        AIR_MODEL.generate(None, KEY, 2, continue_prob=jnp.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"keys have 3 rows but images have batch size 2"):
        AIR_MODEL.infer_with_keys(None, x, jax.random.split(KEY, (3, 1)))
    with pytest.raises(ValueError, match=r"K >= 1"):
        AIR_MODEL.infer_with_keys(None, x, jax.random.split(KEY, (2, 0)))
    with pytest.raises(ValueError, match=r"disc_later_presence_bias must be a scalar"):
        SQAIR_MODEL.infer(None, _good("sqair"), KEY, 1, disc_later_presence_bias=jnp.zeros(2))


# ---- keys -----------------------------------------------------------------------------------------------------------

KEYED = {
    "AIR.infer": lambda k: AIR_MODEL.infer(None, _good("air"), k),
    "AIR.init": lambda k: AIR_MODEL.init(k, _good("air")),
    "AIR.generate": lambda k: AIR_MODEL.generate(None, k, 2),
    "SQAIR.infer": lambda k: SQAIR_MODEL.infer(None, _good("sqair"), k),
    "SQAIR.init": lambda k: SQAIR_MODEL.init(k),
    "SQAIR.generate": lambda k: SQAIR_MODEL.generate(None, k, 1, 1),
    "SQAIR.conditional_generate": lambda k: SQAIR_MODEL.conditional_generate(None, _good("sqair"), k, 1),
    "api.infer_images": lambda k: api.infer_images(_run("air"), _good("air"), key=k),
}
ACCEPTED = re.escape("jax.random.key(seed)")


@pytest.mark.parametrize("entry", KEYED)
def test_bad_keys_are_rejected_with_what_to_pass(entry):
    call = KEYED[entry]
    with pytest.raises(TypeError, match=f"key must be {ACCEPTED}.*got str 'abc'"):
        call("abc")
    with pytest.raises(ValueError, match=r"got an array of shape \(3,\) and dtype uint32 .* shape \(2,\)"):
        call(np.zeros(3, np.uint32))
    with pytest.raises(ValueError, match=r"shape \(2,\) and dtype float32"):
        call(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"got a typed key array of shape \(2,\)"):
        call(jax.random.split(KEY, 2))
    if not entry.startswith("api."):  # the API also takes int seeds; the models take keys only
        with pytest.raises(TypeError, match=f"key must be {ACCEPTED}.*got int 3"):
            call(3)


def test_old_style_keys_give_the_same_results_as_typed_keys():
    """The fault probe: AIR.infer failed on jax.random.PRNGKey keys (uint32[2]) with a chex shape error. Now both key
    styles (and [B, K, 2] raw keys in infer_with_keys) give identical results, also through init."""
    x = jnp.asarray(_good("air"))
    params = AIR_MODEL.init(jax.random.PRNGKey(0), x)
    jax.tree.map(np.testing.assert_array_equal, params, AIR_MODEL.init(jax.random.key(0), x))

    @jax.jit
    def both(p, k):
        raw_keys = jax.random.key_data(jax.random.split(validation.check_key(k), (2, 2)))
        return (
            AIR_MODEL.infer(p, x, k, num_particles=2).log_weight,
            AIR_MODEL.infer_with_keys(p, x, raw_keys).log_weight,
        )

    typed, raw = both(params, jax.random.key(7)), both(params, jax.random.PRNGKey(7))
    for a in typed + raw:
        np.testing.assert_array_equal(a, typed[0])
    assert np.all(np.isfinite(typed[0]))


def test_check_key_wraps_old_style_keys_and_seeds():
    typed = validation.check_key(jax.random.PRNGKey(5))
    assert jnp.issubdtype(typed.dtype, jax.dtypes.prng_key) and typed.shape == ()
    np.testing.assert_array_equal(jax.random.key_data(typed), jax.random.key_data(jax.random.key(5)))
    batch = validation.check_key(jax.random.key_data(jax.random.split(KEY, (2, 3))), batch_shape=(2, 3))
    assert batch.shape == (2, 3) and jnp.issubdtype(batch.dtype, jax.dtypes.prng_key)
    for seed, expected in ((None, 0), (4, 4), (np.int64(4), 4)):
        np.testing.assert_array_equal(
            jax.random.key_data(validation.check_key(seed, allow_seed=True)),
            jax.random.key_data(jax.random.key(expected)),
        )
    with pytest.raises(TypeError, match="got NoneType"):
        validation.check_key(None)
    # Traced old-style keys are wrapped too (the training loop passes them under jit).
    out = jax.eval_shape(lambda k: validation.check_key(k), jax.ShapeDtypeStruct((2,), jnp.uint32))
    assert out.shape == () and jnp.issubdtype(out.dtype, jax.dtypes.prng_key)


# ---- configs --------------------------------------------------------------------------------------------------------

AIR_CONFIG_CASES = [
    (dict(obs_std=-1.0), r"obs_std must be a finite number > 0; got -1.0"),  # the fault probe: gave NaN
    (dict(obs_std=0.0), r"obs_std must be a finite number > 0"),
    (dict(obs_std=float("nan")), r"obs_std must be a finite number > 0"),
    (dict(max_steps=0), r"max_steps must be an int >= 1; got 0"),
    (dict(z_what_dim=0), r"z_what_dim must be an int >= 1"),
    (dict(rnn_hidden=0), r"rnn_hidden must be an int >= 1"),
    (dict(canvas_shape=(0, SIZE)), r"canvas_shape must be 2 ints >= 1"),
    (dict(glimpse_shape=(SIZE + 1, 4)), r"glimpse_shape \(9, 4\) must not exceed canvas_shape \(8, 8\)"),
    (dict(init_presence_prob=1.0), r"init_presence_prob must be a probability in \(0, 1\)"),
    (dict(init_presence_prob=0.0), r"init_presence_prob must be a probability in \(0, 1\)"),
    (dict(bernoulli_eps=0.0), r"bernoulli_eps must be a number in \(0, 0.5\)"),
    (dict(shift_range=0.0), r"shift_range must be a finite number > 0"),
    (dict(init_where_std=0.0), r"init_where_std must be a finite number > 0"),
    (dict(head_kernel_scale=-0.1), r"head_kernel_scale must be a finite number >= 0"),
    (dict(baseline_hidden=()), r"baseline_hidden must be a non-empty tuple of ints >= 1"),
    (dict(glimpse_encoder_hidden=(0,)), r"glimpse_encoder_hidden must be a tuple of ints >= 1"),
    (dict(image_encoder="cnn"), r"image_encoder must be one of \('raw', 'mlp', 'conv'\); got 'cnn'"),
    (dict(glimpse_decoder="deconv"), r"glimpse_decoder must be one of"),
    (dict(glimpse_decoder="conv", glimpse_shape=(6, 6)), r"glimpse_shape divisible by 4"),
    (dict(scan_unroll=0), r"scan_unroll must be True, False or an int >= 1"),
    (dict(where_prior_scale=(1.0, 0.0, 1.0)), r"where_prior_scale must be 3 finite numbers > 0"),
    (dict(where_prior_loc=(0.0, 0.0)), r"where_prior_loc must be 3 finite numbers"),
    (dict(decoder_output_bias=float("inf")), r"decoder_output_bias must be a finite number"),
]


@pytest.mark.parametrize("overrides, match", AIR_CONFIG_CASES)
def test_air_config_ranges_are_checked_at_construction(overrides, match):
    with pytest.raises(ValueError, match=r"invalid AIRConfig: .*" + match):
        AIRConfig(**{**AIR_TINY, **overrides})


def test_air_config_reports_every_error_at_once():
    with pytest.raises(ValueError) as e:
        AIRConfig(obs_std=-1, max_steps=0)
    assert "obs_std" in str(e.value) and "max_steps" in str(e.value)


SQAIR_TINY = dict(
    hidden=4, image_shape=(SIZE, SIZE), glimpse_shape=(4, 4), z_what_dim=2, max_objects=1, max_seq_len=T_MAX
)
SQAIR_CONFIG_CASES = [
    (dict(obs_std=0.0), r"obs_std must be a finite number > 0; got 0.0"),
    (dict(obs_std=-1.0), r"obs_std must be a finite number > 0"),
    (dict(std_floor=0.0), r"std_floor must be a finite number > 0"),
    (dict(max_objects=0), r"max_objects must be an int >= 1; got 0"),
    (dict(hidden=0), r"hidden must be an int >= 1"),
    (dict(z_what_dim=0), r"z_what_dim must be an int >= 1"),
    (dict(max_seq_len=0), r"max_seq_len must be an int >= 1"),
    (dict(glimpse_shape=(SIZE + 2, 4)), r"glimpse_shape \(10, 4\) must not exceed image_shape \(8, 8\)"),
    (dict(image_shape=(SIZE, 0)), r"image_shape must be 2 ints >= 1"),
    (dict(where_prior_scale=(1.0, 1.0, 0.0, 1.0)), r"where_prior_scale must be 4 finite numbers > 0"),
    (dict(where_prior_loc=(0.0,)), r"where_prior_loc must be 4 finite numbers"),
    (dict(keep_logit_init=float("inf")), r"keep_logit_init must be a finite number"),
    (dict(prop_update_scale=-0.1), r"prop_update_scale must be a finite number >= 0"),
    (dict(disc_head_kernel_scale=-1.0), r"disc_head_kernel_scale must be a finite number >= 0"),
    (dict(first_frame_continue_prob=1.0), r"first_frame_continue_prob must be in \[0, 1\)"),
    (dict(conv_strides=(2, 2)), r"conv_channels and conv_strides must have the same length"),
    (dict(arch="transformer"), r"arch must be one of \('mlp', 'conv'\)"),
]


@pytest.mark.parametrize("overrides, match", SQAIR_CONFIG_CASES)
def test_sqair_config_ranges_are_checked_at_construction(overrides, match):
    with pytest.raises(ValueError, match=r"invalid SQAIRConfig: .*" + match):
        SQAIRConfig(**{**SQAIR_TINY, **overrides})


def test_default_and_paper_configs_are_valid():
    AIRConfig()
    SQAIRConfig()
    mlp_sqair_config(32)


# ---- estimators with K ----------------------------------------------------------------------------------------------


def test_estimators_refuse_too_few_particles():
    none = jnp.zeros((4, 0))
    with pytest.raises(ValueError, match=r"K >= 1"):
        objectives.iwae(none)
    with pytest.raises(ValueError, match=r"log_mean_exp needs at least 1 particle \(K >= 1\)"):
        objectives.log_mean_exp(none)
    for k in (0, 1):
        with pytest.raises(ValueError, match=r"VIMCO needs at least 2 particles .*\(K >= 2\)"):
            objectives.vimco(jnp.zeros((4, k)), None, jnp.zeros((4, k)))
    with pytest.raises(ValueError, match=r"K >= 1"):
        objectives.nvil(none, None, none, jnp.zeros(4), objectives.nvil_init())
    terms = jnp.zeros((4, 0, 3))  # [batch, particles = 0, steps]: returned NaN losses silently
    with pytest.raises(ValueError, match=r"NVIL needs at least 1 particle \(K >= 1\)"):
        objectives.nvil_per_step(terms, terms, terms, objectives.nvil_init((3,)))


def test_air_task_with_nvil_and_no_particles_raises_value_error():
    """The fault probe: NVIL with K = 0 raised an IndexError deep in the loss. Now a ValueError names num_particles:
    from the task's configuration check, or, if a task lets K = 0 through, from AIR.infer's own check."""
    batch = {"images": np.zeros((2, SIZE, SIZE), np.uint8), "counts": np.zeros(2, np.int32)}
    with pytest.raises(ValueError, match=r"num_particles >= 1; got 0|num_particles must be an int >= 1; got 0"):
        task = air_task.AIRTask(ml_collections.ConfigDict(dict(estimator="nvil", num_particles=0, model=AIR_TINY)))
        task.loss(None, None, batch, KEY, 0)
