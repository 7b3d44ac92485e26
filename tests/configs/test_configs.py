"""ocr_jax.configs: configs named on the command line (NAME[:VARIANT]) or given as files, and the list --help shows."""

import functools
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import pytest
from absl import flags

from ocr_jax import configs
from ocr_jax.models import air as air_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The configs the package holds, spelt out here (not read from ocr_jax.configs); tests/test_install.py checks the wheel
# against the same list.
PACKAGED_CONFIGS = {
    "air_multi_mnist",
    "gmm_pruning",
    "mnist_bounds",
    "pcfg",
    "sbn",
    "sqair_mnist",
    "toy_gaussian_convergence",
    "toy_gaussian_snr",
    "toy_vae",
    "vrnn_mnist",
}


def parse_flag(spec, *argv):
    fv = flags.FlagValues()
    holder = configs.define_config_flag("config", None, flag_values=fv)
    fv(["prog", f"--config={spec}", *argv])
    return holder.value


def help_listing() -> dict[str, list[str]]:
    """{config: [variants]} as `--help` of the training CLI prints them (under --config)."""
    out = subprocess.run(
        [sys.executable, "-m", "ocr_jax.cli.train", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert "flags:" in out.stdout, out.stderr[-2000:]  # absl's --help exits with status 1
    text = re.sub(r"\s+", " ", out.stdout)  # absl wraps help lines
    listing = {}
    for name in PACKAGED_CONFIGS:
        match = re.search(rf"{name}: ([a-z0-9_, ]+?)(?: \(combine| \[for|(?= [a-z_]+:)| \(default)", text)
        assert match, (name, text)
        listing[name] = [v.strip() for v in match.group(1).split(",")]
    return listing


def test_every_config_and_every_variant_in_help_resolves_by_name():
    assert set(configs.names()) == PACKAGED_CONFIGS
    listing = help_listing()
    assert {n: list(configs.variants(n)) for n in PACKAGED_CONFIGS} == listing
    for name, variants in listing.items():
        assert "quick" in variants, name  # each config has a small variant (STYLE.md)
        default = configs.get_config(name)
        assert isinstance(default, ml_collections.ConfigDict)
        for variant in variants:
            config = configs.get_config(f"{name}:{variant}")
            assert isinstance(config, ml_collections.ConfigDict), (name, variant)
            assert config.to_dict() != default.to_dict(), (name, variant)  # a variant changes something
        assert configs.get_config(f"{name}.py") == default  # NAME.py names the packaged config too
    assert configs.get_config("air_multi_mnist:nvil+quick").task_config.estimator == "nvil"


def test_flag_accepts_names_old_paths_and_files(tmp_path):
    by_name = parse_flag("air_multi_mnist:quick")
    assert by_name.num_steps == 60 and by_name.task_config.data.synthetic_digits
    # The path used before the configs moved into the package still works (from any directory).
    assert parse_flag("experiments/configs/air_multi_mnist.py:quick") == by_name
    # A config file of one's own: an existing file wins over a packaged name.
    own = tmp_path / "toy_vae.py"
    shutil.copy(os.path.join(os.path.dirname(configs.__file__), "toy_vae.py"), own)
    own.write_text(own.read_text().replace("config.num_steps = 300", "config.num_steps = 7"))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert parse_flag("toy_vae.py:quick").num_steps == 7
        assert parse_flag("toy_vae:quick").num_steps == 300  # a name is the packaged config
    finally:
        os.chdir(cwd)
    assert parse_flag(f"{own}:quick").num_steps == 7


def test_unknown_names_and_variants_say_what_exists():
    with pytest.raises(ValueError, match="air_multi_mnist, gmm_pruning"):
        configs.resolve("air_multi_mnst")
    with pytest.raises(flags.IllegalFlagValueError, match="packaged configs: air_multi_mnist"):
        parse_flag("no_such_config:quick")
    with pytest.raises(ValueError, match="variants: conv, small, cpu, quick"):
        configs.get_config("sqair_mnist:fast")
    with pytest.raises(ValueError, match="combine them with"):
        configs.get_config("air_multi_mnist:nvil+faster")
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['quick\+quick'\]"):
        configs.get_config("toy_vae:quick+quick")  # only air_multi_mnist combines variants


def test_old_module_paths_alias_the_packaged_configs():
    import importlib

    from experiments.configs import air_multi_mnist
    from ocr_jax.configs import air_multi_mnist as packaged

    assert air_multi_mnist is packaged
    assert importlib.import_module("experiments.configs.sqair_mnist") is importlib.import_module(
        "ocr_jax.configs.sqair_mnist"
    )


def test_run_controls_can_be_set_from_the_command_line_for_every_training_config(monkeypatch):
    """``--config.allow_config_change`` and ``--config.stop_after_seconds`` parse for configs that do not declare
    them (the parser adds the training loop's defaults); a config's own value is kept."""
    from absl import flags as absl_flags

    from ocr_jax import configs

    for spec, declared_stop in (("toy_vae:quick", None), ("sqair_mnist:quick", 0)):
        argv = ["prog", f"--config={spec}", "--config.allow_config_change=True", "--config.stop_after_seconds=540"]
        monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
        values = absl_flags.FlagValues()
        configs.define_config_flag("config", flag_values=values)
        values(argv)
        assert values.config.allow_config_change is True and values.config.stop_after_seconds == 540
        monkeypatch.setattr("sys.argv", ["prog", f"--config={spec}"])
        values = absl_flags.FlagValues()
        configs.define_config_flag("config", flag_values=values)
        values(["prog", f"--config={spec}"])
        assert values.config.allow_config_change is False
        assert values.config.stop_after_seconds == (0.0 if declared_stop is None else declared_stop)


def test_sqair_anneal_cuts_every_learning_rate_to_a_third_when_sequences_reach_five_frames():
    from ocr_jax.tasks.sqair import curriculum_length
    from ocr_jax.training.optimizers import make_schedule

    for spec, boundary in (
        ("sqair_mnist:cpu+piwae+anneal", 6000),
        ("sqair_mnist:quick+anneal", 400),
        ("sqair_mnist:cpu+short+piwae+anneal", 5250),
    ):
        config = configs.get_config(spec)
        tc = config.task_config
        length = functools.partial(
            curriculum_length,
            start_length=tc.start_length,
            length_every=tc.length_every,
            max_length=10**9,  # uncapped: quick sequences are shorter than five frames
            length_steps=tuple(tc.length_steps),
        )
        assert (length(boundary - 1), length(boundary)) == (4, 5), spec
        for group, cfg in config.optimizers.items():
            schedule = make_schedule(cfg)
            lr = cfg.learning_rate
            assert float(schedule(boundary - 1)) == pytest.approx(lr), (spec, group)
            assert float(schedule(boundary)) == pytest.approx(lr / 3), (spec, group)


def test_sqair_f1bound_bounds_disc_presence_in_the_first_frame_only():
    plain = configs.get_config("sqair_mnist:cpu+piwae+anneal")
    config = configs.get_config("sqair_mnist:cpu+piwae+anneal+f1bound")
    assert plain.task_config.model.disc_presence_logit_bound == 0.0
    assert config.task_config.model.disc_presence_logit_bound == 3.0
    assert config.task_config.model.disc_presence_bound_frames == "first"
    for c in (plain, config):
        c.task_config.model.disc_presence_logit_bound = 0.0
        c.task_config.model.disc_presence_bound_frames = "all"
    assert config.to_json_best_effort() == plain.to_json_best_effort()


def test_sqair_offcanvas_is_the_shift_bound_and_the_inference_clip_only():
    plain = configs.get_config("sqair_mnist:cpu+piwae+anneal+f1bound")
    config = configs.get_config("sqair_mnist:cpu+piwae+anneal+f1bound+offcanvas")
    assert (plain.task_config.model.shift_bound, config.task_config.model.shift_bound) == (1.0, 2.0)
    assert plain.optimizers.inference.clip_global_norm is None
    assert config.optimizers.inference.clip_global_norm == 1000.0
    assert config.optimizers.generative.clip_global_norm is None
    config.task_config.model.shift_bound = 1.0
    config.optimizers.inference.clip_global_norm = None
    assert config.to_json_best_effort() == plain.to_json_best_effort()


def test_sqair_maxscale_is_the_window_bound_and_the_centred_where_prior_only():
    plain = configs.get_config("sqair_mnist:cpu+piwae+anneal+f1bound+offcanvas")
    config = configs.get_config("sqair_mnist:cpu+piwae+anneal+f1bound+offcanvas+maxscale")
    assert (plain.task_config.model.max_glimpse_scale, config.task_config.model.max_glimpse_scale) == (1.0, 0.5)
    assert tuple(config.task_config.model.where_prior_loc) == (0.0, 0.0, 0.0, 0.0)
    config.task_config.model.max_glimpse_scale = 1.0
    config.task_config.model.where_prior_loc = plain.task_config.model.where_prior_loc
    assert config.to_json_best_effort() == plain.to_json_best_effort()


def test_sqair_velocity_is_prop_velocity_only():
    plain = configs.get_config("sqair_mnist:cpu+piwae+anneal+f1bound+offcanvas+maxscale")
    config = configs.get_config("sqair_mnist:cpu+piwae+anneal+f1bound+offcanvas+maxscale+velocity")
    assert (plain.task_config.model.prop_velocity, config.task_config.model.prop_velocity) == (False, True)
    config.task_config.model.prop_velocity = False
    assert config.to_json_best_effort() == plain.to_json_best_effort()


@pytest.mark.parametrize("spec", ["air_multi_mnist", "air_multi_mnist:piwae", "sqair_mnist:cpu", "vrnn_mnist:cpu"])
def test_gradient_clipping_can_be_set_from_the_command_line(monkeypatch, spec):
    """Every optimiser group's ``clip_global_norm`` is unset (None: no clipping) by default and takes a float from
    the command line (a plain None field would refuse any override)."""
    from absl import flags as absl_flags

    from ocr_jax import configs

    values = absl_flags.FlagValues()
    configs.define_config_flag("config", flag_values=values)
    values(["prog", f"--config={spec}"])
    groups = list(values.config.optimizers)
    assert all(values.config.optimizers[g].clip_global_norm is None for g in groups)
    argv = ["prog", f"--config={spec}"] + [f"--config.optimizers.{g}.clip_global_norm=1000" for g in groups]
    monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
    values = absl_flags.FlagValues()
    configs.define_config_flag("config", flag_values=values)
    values(argv)
    assert all(values.config.optimizers[g].clip_global_norm == 1000.0 for g in groups)


def test_air_official_trains_on_the_authors_data_and_with_fast_a_count_prior_of_1e_5_and_an_mlp_image_encoder():
    """`official` changes the data recipe only; with `fast` it also sets the count prior to 1e-5 and the image
    encoder to a 256-unit MLP (whatever order the variants are named in); everything else is `fast`'s."""
    fast = configs.get_config("air_multi_mnist:fast")
    assert fast.task_config.model.image_encoder == "raw"
    for spec in ("air_multi_mnist:fast+official", "air_multi_mnist:official+fast"):
        c = configs.get_config(spec)
        assert c.task_config.data.recipe == "official"
        assert c.task_config.count_prior.start == c.task_config.count_prior.end == 1e-5
        assert c.task_config.model.image_encoder == "mlp" and "image_encoder_hidden" not in c.task_config.model
        assert air_model.AIRConfig().image_encoder_hidden == (256,)  # so the MLP has one layer of 256 units
        c.task_config.data.recipe, c.task_config.count_prior.start, c.task_config.count_prior.end = (
            "kosiorek",
            1e-4,
            1e-4,
        )
        c.task_config.model.image_encoder = "raw"
        assert c.to_dict() == fast.to_dict()
    alone, default = configs.get_config("air_multi_mnist:official"), configs.get_config("air_multi_mnist")
    assert (
        alone.task_config.data.recipe == "official" and alone.task_config.count_prior == default.task_config.count_prior
    )


def test_air_fast_is_piwae_with_a_vimco_start_and_a_constant_count_prior_of_1e_4():
    config = configs.get_config("air_multi_mnist:fast")
    tc = config.task_config
    assert tc.estimator == "switch" and config.num_steps == 5000
    assert dict(tc.estimator_args) | {"then_args": dict(tc.estimator_args.then_args)} == dict(
        first="vimco", then="piwae", steps=1000, then_args=dict(num_repeats=5, score_baseline="leave_one_out")
    )
    from ocr_jax.models.air import continue_prob_schedule

    p = tc.count_prior
    for step in (0, 1000, 20_000):
        rho = float(continue_prob_schedule(step, start=p.start, end=p.end, duration=p.duration, kind=p.kind))
        assert rho == pytest.approx(1e-4)
    plain = configs.get_config("air_multi_mnist:piwae+vimco_start")
    plain.task_config.count_prior.start, plain.task_config.count_prior.end, plain.num_steps = 1e-4, 1e-4, 5000
    assert config.to_json_best_effort() == plain.to_json_best_effort()


def test_sqair_short_is_the_cpu_curriculum_with_short_long_lengths():
    """``cpu+short`` spends 2000, 1500, 1000, 750, 750 steps at lengths 1-5 and 250 at each of 6-10 (7250 steps),
    keeps DISC suppressed through the 2-frame phase as ``cpu`` does, and changes nothing else; it implies ``cpu``."""
    from ocr_jax.tasks.sqair import curriculum_length

    plain = configs.get_config("sqair_mnist:cpu+piwae+anneal+velocity")
    short = configs.get_config("sqair_mnist:cpu+short+piwae+anneal+velocity")
    tc = short.task_config
    lengths = [curriculum_length(s, 1, tc.length_every, 10, tuple(tc.length_steps)) for s in range(short.num_steps)]
    assert [lengths.count(n) for n in range(1, 11)] == [2000, 1500, 1000, 750, 750, 250, 250, 250, 250, 250]
    assert lengths == sorted(lengths)
    assert tc.disc_suppression_steps == lengths.index(3) == 3500
    assert plain.task_config.disc_suppression_steps == 3000  # cpu: through its own 2-frame phase
    for config, boundary in ((plain, 6000), (short, 5250)):
        for group in config.optimizers.values():
            assert dict(group.boundaries_and_scales) == {boundary: pytest.approx(1 / 3)}
    short.task_config.length_steps = ()
    short.task_config.disc_suppression_steps = 3000
    short.num_steps = 15_000
    for group in short.optimizers.values():
        group.boundaries_and_scales = {6000: 1 / 3}
    assert short.to_json_best_effort() == plain.to_json_best_effort()
    alone = configs.get_config("sqair_mnist:short")  # implies cpu
    assert alone.to_json_best_effort() == configs.get_config("sqair_mnist:cpu+short").to_json_best_effort()


def test_sqair_conv_keeps_its_128_units_under_the_cpu_recipe():
    """CONV-SQAIR has 128 units (thesis §5.D.2: wider CONV models overfit); ``cpu`` and ``short`` widen only the MLP
    model to 256, and change nothing else of ``conv`` (whose IWAE-1000 runs in chunks of 10 particles, not 50:
    memory)."""
    for recipe in ("cpu", "short", "cpu+short+piwae+anneal+f1bound+offcanvas+maxscale+velocity"):
        conv = configs.get_config(f"sqair_mnist:conv+{recipe}")
        mlp = configs.get_config(f"sqair_mnist:{recipe}")
        assert (conv.task_config.model.arch, conv.task_config.model.hidden) == ("conv", 128)
        assert (mlp.task_config.model.arch, mlp.task_config.model.hidden) == ("mlp", 256)
        assert (conv.task_config.eval.log_marginal_chunk, mlp.task_config.eval.log_marginal_chunk) == (10, 50)
        conv.task_config.model.arch, conv.task_config.model.hidden = "mlp", 256
        conv.task_config.eval.log_marginal_chunk = 50
        assert conv.to_json_best_effort() == mlp.to_json_best_effort()
    assert configs.get_config("sqair_mnist:conv").task_config.model.hidden == 128


@pytest.mark.parametrize("spec", ["air_multi_mnist", "air_multi_mnist:fast", "air_multi_mnist:bench+pyro_baseline"])
def test_air_scan_unroll_is_a_command_line_switch_that_reaches_the_model(monkeypatch, spec):
    """AIR configs unroll the step scan by default; ``--config.task_config.model.scan_unroll=False`` (the rolled scan
    of the results measured before 2026-12-07) parses and reaches AIRConfig; it is a resumable, computation-only
    field."""
    from absl import flags as absl_flags

    from ocr_jax import configs
    from ocr_jax.tasks.air import make_air_config
    from ocr_jax.training.train import is_resumable_field

    assert configs.get_config(spec).task_config.model.scan_unroll is True
    argv = ["prog", f"--config={spec}", "--config.task_config.model.scan_unroll=False"]
    monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
    values = absl_flags.FlagValues()
    configs.define_config_flag("config", flag_values=values)
    values(argv)
    assert make_air_config(values.config.task_config.model).scan_unroll is False
    assert is_resumable_field("task_config.model.scan_unroll")
