"""benchmarks/profile_step.py: a traced train step's XLA self time is attributed to model scopes and phases."""

from benchmarks.profile_step import profile, scope_and_phase
from ocr_jax.configs import toy_vae


def test_scope_and_phase_strip_jax_wrappers_and_name_the_phase():
    assert scope_and_phase("jit(train_step)/jvp(vmap(AIRInference.controller))/controller/hidden/dot_general") == (
        "AIRInference.controller/controller/hidden",
        "forward",
    )
    assert scope_and_phase(
        "jit(train_step)/transpose(jvp(vmap(vmap())))/while/body/eval_jaxpr/composite_glimpses/dot_general"
    ) == ("composite_glimpses", "backward")
    assert scope_and_phase("jit(train_step)/cond/branch_1_fun/add") == ("(train step)", "update")
    # A model's own switch (SQAIR's present-only decoder) keeps its phase and drops its branch name.
    assert scope_and_phase(
        "jit(train_step)/jvp()/cond/branch_1_fun/SQAIRGenerative.decode/glimpse_decoder/Conv_2/dot_general"
    ) == ("SQAIRGenerative.decode/glimpse_decoder/Conv_2", "forward")
    assert scope_and_phase("jit(train_step)/transpose(jvp())/cond/branch_4_fun/SQAIRGenerative.decode/reshape") == (
        "SQAIRGenerative.decode",
        "backward",
    )


def test_profile_of_a_small_step_accounts_for_its_time():
    config = toy_vae.get_config("quick")
    result = profile(config, steps=3)
    assert result["wall_ms_per_step"] > 0 and result["busy_ms_per_step"] > 0
    shares = [row["share"] for row in result["scopes"]]
    assert abs(sum(shares) - 1.0) < 1e-6
    phases = {row["phase"] for row in result["scopes"]}
    assert {"forward", "backward", "update"} <= phases, phases
    # Operations carry the model's scopes (Flax module names), not only XLA's.
    assert any("/" in row["scope"] or "." in row["scope"] for row in result["scopes"]), result["scopes"][:5]
    assert result["ops"] and all(op["ms_per_step"] >= 0 for op in result["ops"])
