"""The main job trains the `fast` AIR recipe on the authors' data (`+official`); ``--variant`` adds to it and
``--recipe`` replaces it."""

import pytest

from experiments import main_job
from ocr_jax import configs


@pytest.mark.parametrize(
    "recipe, variant, expected",
    [
        ("air_multi_mnist:fast", "", "air_multi_mnist:fast"),
        ("air_multi_mnist:fast", "quick", "air_multi_mnist:fast+quick"),
        ("air_multi_mnist", "quick", "air_multi_mnist:quick"),
        ("air_multi_mnist", "", "air_multi_mnist"),
    ],
)
def test_config_name_adds_the_variant_to_the_recipe(recipe, variant, expected):
    assert main_job.config_name(recipe, variant) == expected


def test_the_main_recipe_is_air_fast_on_the_authors_data_and_quick_keeps_its_estimator_and_prior():
    assert main_job.MAIN_RECIPE == "air_multi_mnist:fast+official"
    main = configs.get_config(main_job.config_name(main_job.MAIN_RECIPE, ""))
    quick = configs.get_config(main_job.config_name(main_job.MAIN_RECIPE, "quick"))
    assert main.num_steps == 5000 and quick.num_steps == 60
    for c in (main, quick):
        assert c.task_config.estimator == "switch" and c.task_config.estimator_args.then == "piwae"
        assert c.task_config.count_prior.start == c.task_config.count_prior.end == 1e-5  # fast+official
    assert quick.task_config.data.synthetic_digits and not main.task_config.data.get("synthetic_digits", False)
    assert main.task_config.data.recipe == quick.task_config.data.recipe == "official"
    assert main.task_config.model.image_encoder == "mlp"  # fast+official: the image through an MLP, not raw pixels
