"""Checkpoints: interrupt-and-resume equals an uninterrupted run; bad checkpoint directories give clear errors and
are never modified."""

import os
import shutil
import signal

import jax
import numpy as np
import pytest

from ocr_jax.tasks import toy_vae
from ocr_jax.training import tasks
from ocr_jax.training.checkpoint import CheckpointError
from ocr_jax.training.train import train_and_evaluate
from tests.toy_runs import persistent_compilation_cache, small_toy_config, tree_digest  # noqa: F401

NUM_STEPS = 8
INTERRUPT_AT = 3


def small_config():
    return small_toy_config(NUM_STEPS, log_every=4, max_to_keep=2)


class CtrlCAtStep(toy_vae.ToyVAETask):
    """The toy VAE whose eval hook sends this process SIGINT (as Ctrl-C would) after step INTERRUPT_AT."""

    def evaluate(self, params, model_state, step, workdir):
        if step == INTERRUPT_AT:
            os.kill(os.getpid(), signal.SIGINT)
        return {}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state = train_and_evaluate(small_config(), str(workdir))
    return workdir, jax.tree.map(np.asarray, state.to_dict())


def test_interrupt_then_resume_is_bitwise_equal_to_uninterrupted(uninterrupted, tmp_path):
    _, expected = uninterrupted
    tasks.register("toy_vae_ctrl_c_test", CtrlCAtStep, overwrite=True)
    config = small_config()
    config.task = "toy_vae_ctrl_c_test"
    config.eval_every = 1
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    with pytest.raises(KeyboardInterrupt, match=f"SIGINT at step {INTERRUPT_AT}; checkpoint saved"):
        train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["2", str(INTERRUPT_AT)]
    assert signal.getsignal(signal.SIGINT) is handler_before  # our handler removed again

    config = small_config()
    config.task = "toy_vae_ctrl_c_test"  # the run's own task (a resume may not change it); it stops no more
    resumed = train_and_evaluate(config, str(tmp_path))
    resumed = jax.tree.map(np.asarray, resumed.to_dict())
    assert int(resumed["step"]) == NUM_STEPS
    jax.tree.map(np.testing.assert_array_equal, resumed, expected)  # params, opt states, model state, rng: bitwise


def corrupt_copy(uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    return workdir


def test_corrupt_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_newest_good_one(uninterrupted, tmp_path):
    workdir = corrupt_copy(uninterrupted, tmp_path)
    latest = workdir / "checkpoints" / str(NUM_STEPS)
    # Damage the array data of the latest checkpoint (truncate every data file of the OCDBT store).
    damaged = 0
    for d, _, files in os.walk(latest):
        for name in files:
            if "d" in os.path.relpath(d, latest).split(os.sep):  # ocdbt data files live under .../d/
                with open(os.path.join(d, name), "r+b") as f:
                    f.truncate(7)
                damaged += 1
    assert damaged > 0
    before = tree_digest(latest)
    config = small_config()
    config.num_steps = NUM_STEPS + 4
    state = train_and_evaluate(config, str(workdir))
    assert int(state.step) == NUM_STEPS + 4
    # the damaged step is kept, byte for byte, out of orbax's rotation
    assert tree_digest(workdir / "checkpoints" / f"{NUM_STEPS}.corrupt") == before


def test_unfinished_step_directory_is_a_clear_error_and_left_untouched(uninterrupted, tmp_path):
    workdir = corrupt_copy(uninterrupted, tmp_path)
    (workdir / "checkpoints" / "12").mkdir()  # e.g. a crash mid-save, or a partial copy
    (workdir / "checkpoints" / "12" / "junk").write_text("x")
    before = tree_digest(workdir / "checkpoints")
    config = small_config()
    config.num_steps = 20
    with pytest.raises(CheckpointError, match=r"step directories \[12\] that are not finished"):
        train_and_evaluate(config, str(workdir))
    assert tree_digest(workdir / "checkpoints") == before


def test_missing_restore_from_directory_is_a_clear_error(tmp_path):
    config = small_config()
    config.checkpoint.restore_from = str(tmp_path / "does_not_exist")
    with pytest.raises(CheckpointError, match="does_not_exist does not exist"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "does_not_exist").exists()


def test_checkpoint_path_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints").write_text("not a directory")
    with pytest.raises(CheckpointError, match="exists but is not a directory"):
        train_and_evaluate(small_config(), str(tmp_path))
    assert (tmp_path / "checkpoints").read_text() == "not a directory"


@pytest.mark.parametrize("given", ["checkpoints", "run"])
def test_warm_start_from_another_runs_checkpoints(uninterrupted, tmp_path, given):
    source, expected = uninterrupted
    config = small_config()
    config.checkpoint.restore_from = str(source / "checkpoints" if given == "checkpoints" else source)
    state = train_and_evaluate(config, str(tmp_path))  # already at num_steps: restores, trains nothing
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params), expected["params"])
