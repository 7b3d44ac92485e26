"""Nothing lost, nothing silently wrong (issue #18): invalid configs, two processes on one workdir, corrupt
checkpoints, a resumed run with another config, a full disk and a finished run each end in one clear message, with
every checkpoint kept (ocr_jax/training/{train,checkpoint,writers}.py, ocr_jax/cli/train.py)."""

import errno
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ocr_jax.training import train as train_lib
from ocr_jax.training import writers
from ocr_jax.training.checkpoint import MANIFEST, Checkpointer, CheckpointError, RunSafetyError
from ocr_jax.training.train import train_and_evaluate
from tests.toy_runs import persistent_compilation_cache, small_toy_config, tree_digest  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_STEPS = 8


def small_config():
    return small_toy_config(NUM_STEPS, log_every=2, max_to_keep=3)


def as_numpy(state):
    return jax.tree.map(np.asarray, state.to_dict())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (checkpoints 4, 6, 8) and its final state."""
    workdir = tmp_path_factory.mktemp("finished")
    return workdir, as_numpy(train_and_evaluate(small_config(), str(workdir)))


def copy_run(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    return workdir


def corrupt(step_dir, offset=100, count=50):
    """Overwrites ``count`` bytes of the largest array data file of a checkpoint step; returns its relative path."""
    files = [
        os.path.join(d, n)
        for d, _, names in os.walk(step_dir)
        for n in names
        if os.sep + "d" + os.sep in os.path.join(d, n)
    ]  # ocdbt data files live under .../d/
    path = max(files, key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(count))
    return os.path.relpath(path, step_dir)


def warnings_text(caplog):
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


# ---- 1. Invalid configs: refused before anything is written. -------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,message",
    [
        ("checkpoint.max_to_keep", 0, "checkpoint.max_to_keep=0: must be an integer >= 1"),
        ("checkpoint.every", 0, "checkpoint.every=0: must be an integer >= 1"),
        ("log_every", 0, "log_every=0: must be an integer >= 1"),
        ("eval_every", -5, "eval_every=-5: must be an integer >= 0"),
        ("global_batch_size", 0, "global_batch_size=0: must be an integer >= 1 divisible"),
        ("num_steps", -1, "num_steps=-1: must be an integer >= 0"),
        ("stop_after_seconds", -1.0, "stop_after_seconds=-1.0: must be a number >= 0"),
        ("stop_when", dict(metric="eval/elbo", at_least=0.0), "eval_every=0: must be >= 1 with stop_when"),
    ],
)
def test_invalid_config_is_refused_before_anything_is_written(finished, tmp_path, field, value, message):
    workdir = copy_run(finished, tmp_path)
    before = tree_digest(workdir)
    config = small_config()
    config.num_steps = 2 * NUM_STEPS  # would train and rotate checkpoints if it started
    *parents, name = field.split(".")
    target = config
    for parent in parents:
        target = target[parent]
    target[name] = value
    with pytest.raises(RunSafetyError, match="invalid config: .*" + re.escape(message)):
        train_and_evaluate(config, str(workdir))
    assert tree_digest(workdir) == before  # checkpoints, config.json, metrics: untouched
    with pytest.raises(RunSafetyError, match="Nothing was written"):
        train_and_evaluate(config, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


# ---- 2. One training process per workdir. --------------------------------------------------------------------------
def write_lock(workdir, pid, host):
    (workdir / writers.LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host, "since": "earlier"}))


def test_a_live_lock_holder_keeps_a_second_run_out(finished, tmp_path):
    workdir = copy_run(finished, tmp_path)
    config = small_config()
    config.num_steps = 2 * NUM_STEPS
    holder = subprocess.Popen(["sleep", "60"])  # a live process of this host
    try:
        write_lock(workdir, holder.pid, socket.gethostname())
        before = tree_digest(workdir)
        host = re.escape(socket.gethostname())
        with pytest.raises(RunSafetyError, match=rf"in use by pid {holder.pid} on host '{host}'"):
            train_and_evaluate(config, str(workdir))
        assert tree_digest(workdir) == before
    finally:
        holder.kill()
        holder.wait()
    # A holder on another host cannot be checked: refused too, with the way out.
    write_lock(workdir, 1, "some-other-host")
    with pytest.raises(RunSafetyError, match=r"in use by pid 1 on host 'some-other-host'.*delete .*run\.lock"):
        train_and_evaluate(config, str(workdir))


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(finished, tmp_path, caplog, capsys):
    workdir = copy_run(finished, tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lock(workdir, dead.pid, socket.gethostname())
    state = train_and_evaluate(small_config(), str(workdir))  # finished: nothing to train
    assert int(state.step) == NUM_STEPS
    assert f"taking over the lock of pid {dead.pid}" in warnings_text(caplog)
    assert not (workdir / writers.LOCK_NAME).exists()  # released again


def test_cli_on_a_workdir_in_use_prints_one_error_line(tmp_path):
    """Two processes: this one holds the lock (as a running training would); the CLI on the same workdir stops."""
    workdir = tmp_path / "run"
    with writers.workdir_lock(str(workdir)):
        result = subprocess.run(
            [sys.executable, "-m", "experiments.main", "--config=toy_vae:quick", f"--workdir={workdir}"],
            cwd=REPO,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"in use by pid {os.getpid()} on host" in errors[0], result.stderr[-3000:]
    assert sorted(os.listdir(workdir)) == []  # lock released by us; the refused run wrote nothing


# ---- 3. Corrupt checkpoints: reported, set aside, never restored, never deleted. ----------------------------------
def test_corrupt_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_newest_good(finished, tmp_path, caplog):
    workdir = copy_run(finished, tmp_path)
    checkpoints = workdir / "checkpoints"
    bad_file = corrupt(checkpoints / str(NUM_STEPS))
    corrupted = tree_digest(checkpoints / str(NUM_STEPS))
    good = {s: tree_digest(checkpoints / str(s)) for s in (4, 6)}

    state = train_and_evaluate(small_config(), str(workdir))  # resumes from 6, trains 7 and 8 again

    warning = [line for line in warnings_text(caplog).splitlines() if "corrupt" in line]
    assert len(warning) == 1 and f"step {NUM_STEPS}" in warning[0] and bad_file in warning[0], warning
    assert "resuming from step 6" in warning[0]
    jax.tree.map(np.testing.assert_array_equal, as_numpy(state), finished[1])  # bitwise the uninterrupted result
    assert sorted(os.listdir(checkpoints)) == ["4", "6", "8", "8.corrupt"]
    assert tree_digest(checkpoints / "8.corrupt") == corrupted  # kept as it was, out of rotation
    assert all(tree_digest(checkpoints / str(s)) == digest for s, digest in good.items())
    assert (checkpoints / "8" / MANIFEST).exists()


def test_readers_skip_a_corrupt_checkpoint_without_touching_it(finished, tmp_path, caplog):
    """What `ocr_jax.load_run` does (Checkpointer(must_exist=True), latest_step, restore_items, all_steps)."""
    workdir = copy_run(finished, tmp_path)
    bad_file = corrupt(workdir / "checkpoints" / str(NUM_STEPS))
    before = tree_digest(workdir)
    target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), finished[1]["params"])}
    checkpointer = Checkpointer(str(workdir / "checkpoints"), must_exist=True)
    try:
        assert checkpointer.latest_step() == 6
        assert f"step {NUM_STEPS}" in warnings_text(caplog) and bad_file in warnings_text(caplog)
        assert checkpointer.all_steps() == [4, 6]
        params = checkpointer.restore_items(target, 6)["params"]
        assert jax.tree.structure(params) == jax.tree.structure(target["params"])
        with pytest.raises(
            CheckpointError, match=rf"step {NUM_STEPS} .* is corrupt \({bad_file}.*good steps: \[4, 6\]"
        ):
            checkpointer.restore_items(target, NUM_STEPS)
    finally:
        checkpointer.close()
    assert tree_digest(workdir) == before


def test_every_checkpoint_corrupt_is_an_error_and_nothing_is_modified(finished, tmp_path):
    workdir = copy_run(finished, tmp_path)
    for step in (4, 6, 8):
        corrupt(workdir / "checkpoints" / str(step))
    before = tree_digest(workdir)
    with pytest.raises(CheckpointError, match="every checkpoint in .* is corrupt .*Nothing was modified"):
        train_and_evaluate(small_config(), str(workdir))
    assert tree_digest(workdir) == before


# ---- 4. A resumed run keeps the config its checkpoints were trained with. -----------------------------------------
def test_config_changes_name_the_fields_and_know_which_may_change():
    old = {"num_steps": 8, "seed": 0, "optimizers": {"generative": {"learning_rate": 1e-3}}, "checkpoint": {"every": 2}}
    new = {
        "num_steps": 16,
        "seed": 0,
        "optimizers": {"generative": {"learning_rate": 3e-4}},
        "checkpoint": {"every": 4},
        "stop_when": {"metric": "eval/elbo", "at_least": 0.0},
        "extra": [1, 2],
        "estimator_args": {},
    }
    changes = train_lib.config_changes(old, new)
    assert [c[0] for c in changes] == [
        "checkpoint.every",
        "extra",
        "num_steps",
        "optimizers.generative.learning_rate",
        "stop_when.at_least",
        "stop_when.metric",
    ]  # an added empty group is no change
    assert [c[0] for c in train_lib.config_changes(new, old)][-2:] == ["stop_when.at_least", "stop_when.metric"]
    refused = [c for c in changes if not train_lib.is_resumable_field(c[0])]
    assert (
        train_lib.describe_changes(refused) == "extra: (absent) -> [1, 2], optimizers.generative.learning_rate: "
        "0.001 -> 0.0003"
    )


def test_a_task_field_added_since_the_run_started_at_its_default_is_no_change():
    """A run's config.json from before ``prop_presence_logit_bound`` existed resumes with today's config when the new
    field keeps the task default (0.0, the behaviour the run was trained with), and not with another value; a
    missing field outside task_config, or one the task's defaults do not know, is still a change."""
    from ocr_jax.configs import sqair_mnist

    new = train_lib.config_as_json(sqair_mnist.get_config("quick"))
    old = json.loads(json.dumps(new))
    del old["task_config"]["model"]["prop_presence_logit_bound"]
    defaults = train_lib.task_defaults(new)
    assert defaults["model"]["prop_presence_logit_bound"] == 0.0
    changes = train_lib.config_changes(old, new)
    assert [c[0] for c in changes] == ["task_config.model.prop_presence_logit_bound"]
    assert train_lib.is_added_default(changes[0], defaults)
    new["task_config"]["model"]["prop_presence_logit_bound"] = 3.0
    assert not train_lib.is_added_default(train_lib.config_changes(old, new)[0], defaults)
    new["task_config"]["not_a_task_field"] = 0.0
    new["new_top_level_field"] = 0.0
    changes = train_lib.config_changes(old, new)
    assert [c[0] for c in changes if not train_lib.is_added_default(c, defaults)] == [
        "new_top_level_field",
        "task_config.model.prop_presence_logit_bound",
        "task_config.not_a_task_field",
    ]
    assert train_lib.task_defaults({"task_module": None}) == {}


def test_a_sqair_run_saved_with_its_model_fields_at_the_top_level_resumes_under_task_config_model(tmp_path):
    """Runs saved before SQAIR's model options moved under ``task_config.model`` (flat fields, ``glimpse_size``) are
    upgraded on reading (`tasks.upgraded_run_config`): the same config is no change, a changed model field still is,
    and `ocr_jax.api.load_config` returns the new layout."""
    from ocr_jax.configs import sqair_mnist
    from ocr_jax.tasks.sqair import default_model_config
    from ocr_jax.training import tasks as tasks_lib

    new = train_lib.config_as_json(sqair_mnist.get_config("cpu+f1bound"))
    model = new["task_config"]["model"]
    flat = {k: v for k, v in new["task_config"].items() if k != "model"}
    flat.update({k: v for k, v in model.items() if k not in ("glimpse_shape", "keep_logit_init")})
    flat["glimpse_size"] = model["glimpse_shape"][0]  # the old name; keep_logit_init: absent, as in the oldest runs
    flat["likelihood_sigma"] = flat.pop("obs_std")  # the old name of AIR's and VRNN's obs_std
    old = {**new, "task_config": flat, "task_module": "ocr_jax.models.sqair_task"}  # and the old module name
    upgraded = tasks_lib.upgraded_run_config(old)
    assert upgraded["task_module"] == "ocr_jax.tasks.sqair"
    assert set(upgraded["task_config"]["model"]) == set(default_model_config()) - {"keep_logit_init"}
    defaults = train_lib.task_defaults(new)
    changes = train_lib.config_changes(upgraded, tasks_lib.upgraded_run_config(new))
    assert [c[0] for c in changes] == ["task_config.model.keep_logit_init"]
    assert train_lib.is_added_default(changes[0], defaults)
    assert tasks_lib.upgraded_run_config(new) == new  # the current layout is left as it is
    # runs saved under task_config.model before the rename: only the name changes
    renamed = {k: v for k, v in model.items() if k != "obs_std"} | {"likelihood_sigma": model["obs_std"]}
    between = {**new, "task_config": {**new["task_config"], "model": renamed}}
    assert tasks_lib.upgraded_run_config(between) == new
    with open(tmp_path / "config.json", "w") as f:
        json.dump(old, f)
    from ocr_jax import api

    loaded = api.load_config(tmp_path)
    assert list(loaded.task_config.model.glimpse_shape) == [20, 20]
    assert "hidden" not in loaded.task_config and loaded.task_config.model.hidden == model["hidden"]
    new["task_config"]["model"]["hidden"] = 8
    changes = train_lib.config_changes(upgraded, tasks_lib.upgraded_run_config(new))
    assert [c[0] for c in changes if not train_lib.is_added_default(c, defaults)] == ["task_config.model.hidden"]


def test_a_vrnn_run_saved_with_its_model_fields_at_the_top_level_resumes_under_task_config_model(tmp_path):
    """Runs saved before the VRNN's model options moved under ``task_config.model`` (flat fields, the likelihood's
    standard deviation as ``likelihood_sigma``, no ``initial_scale`` / ``min_scale``) are upgraded on reading
    (`tasks.upgraded_run_config`): the same config is no change, a changed model field still is, and
    `ocr_jax.api.load_config` returns the new layout."""
    from ocr_jax.configs import vrnn_mnist
    from ocr_jax.tasks.vrnn import default_model_config
    from ocr_jax.training import tasks as tasks_lib

    new = train_lib.config_as_json(vrnn_mnist.get_config("conv+cpu"))
    model = new["task_config"]["model"]
    flat = {k: v for k, v in new["task_config"].items() if k != "model"}
    flat.update({k: v for k, v in model.items() if k not in ("obs_std", "initial_scale", "min_scale")})
    flat["likelihood_sigma"] = model["obs_std"]  # the old name; initial_scale, min_scale: absent, as in the old runs
    old = {**new, "task_config": flat}
    upgraded = tasks_lib.upgraded_run_config(old)
    assert upgraded["task_module"] == "ocr_jax.tasks.vrnn"
    assert set(upgraded["task_config"]["model"]) == set(default_model_config()) - {"initial_scale", "min_scale"}
    assert upgraded["task_config"]["model"]["arch"] == "conv" and "arch" not in upgraded["task_config"]
    defaults = train_lib.task_defaults(new)
    changes = train_lib.config_changes(upgraded, tasks_lib.upgraded_run_config(new))
    assert [c[0] for c in changes] == ["task_config.model.initial_scale", "task_config.model.min_scale"]
    assert all(train_lib.is_added_default(c, defaults) for c in changes)
    assert tasks_lib.upgraded_run_config(new) == new  # the current layout is left as it is
    with open(tmp_path / "config.json", "w") as f:
        json.dump(old, f)
    from ocr_jax import api

    loaded = api.load_config(tmp_path)
    assert loaded.task_config.model.obs_std == 0.3 and loaded.task_config.model.num_layers == 1
    assert "hidden" not in loaded.task_config and "likelihood_sigma" not in loaded.task_config
    from ocr_jax.tasks.vrnn import VRNNTask, model_config

    assert model_config(loaded.task_config) == VRNNTask(new["task_config"]).model.config  # the same model
    new["task_config"]["model"]["hidden"] = 8
    changes = train_lib.config_changes(upgraded, tasks_lib.upgraded_run_config(new))
    assert [c[0] for c in changes if not train_lib.is_added_default(c, defaults)] == ["task_config.model.hidden"]


def test_resume_with_another_config_is_refused_and_config_json_kept(finished, tmp_path):
    workdir = copy_run(finished, tmp_path)
    before = tree_digest(workdir)
    config = small_config()
    config.num_steps, config.log_every, config.checkpoint.every = 2 * NUM_STEPS, 4, 4  # these may change
    config.optimizers.generative.learning_rate = 3e-4
    config.task_config.hidden = 16
    with pytest.raises(
        RunSafetyError,
        match=r"refusing to resume .* at step 8: .*optimizers\.generative\.learning_rate: "
        r"0\.001 -> 0\.0003, task_config\.hidden: 8 -> 16\. Nothing was changed",
    ):
        train_and_evaluate(config, str(workdir))
    assert tree_digest(workdir) == before  # config.json still describes the checkpoints


def test_allow_config_change_resumes_with_the_new_values(finished, tmp_path, caplog):
    workdir = copy_run(finished, tmp_path)
    config = small_config()
    config.allow_config_change = True
    config.task_config.hidden = 16  # the checkpoints cannot hold this: intact, but does not fit
    before = tree_digest(workdir)
    with pytest.raises(
        CheckpointError, match=r"match their sha256 manifest.*does not fit.*task_config\.hidden: 8 -> 16"
    ):
        train_and_evaluate(config, str(workdir))
    assert tree_digest(workdir) == before

    config = small_config()
    config.allow_config_change = True
    config.num_steps = NUM_STEPS + 2
    config.seed = 5  # another data order and other keys from here on (the same compiled step: fast)
    assert int(train_and_evaluate(config, str(workdir)).step) == NUM_STEPS + 2
    assert "seed: 0 -> 5" in warnings_text(caplog)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["seed"] == 5 and saved["num_steps"] == NUM_STEPS + 2


def test_a_run_that_names_a_moved_task_module_resumes(finished, tmp_path):
    """The config.json of a run made before the tasks moved to ocr_jax/tasks (issue #14) names the old module, e.g.
    ocr_jax.training.toy_vae: the run resumes with today's config, and a config file that names the old module (one
    copied before the move) still builds the task and resumes (training.tasks.RENAMED_TASK_MODULES)."""
    workdir = copy_run(finished, tmp_path)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["task_module"] == "ocr_jax.tasks.toy_vae"
    (workdir / "config.json").write_text(json.dumps({**saved, "task_module": "ocr_jax.training.toy_vae"}))
    config = small_config()
    config.num_steps = NUM_STEPS + 2
    assert int(train_and_evaluate(config, str(workdir)).step) == NUM_STEPS + 2
    assert json.loads((workdir / "config.json").read_text())["task_module"] == "ocr_jax.tasks.toy_vae"
    config.num_steps = NUM_STEPS + 4
    config.task_module = "ocr_jax.training.toy_vae"
    assert int(train_and_evaluate(config, str(workdir)).step) == NUM_STEPS + 4


# ---- 5. A full disk: one clear error, the checkpoints intact. -----------------------------------------------------
def test_disk_full_while_training_keeps_the_checkpoints_and_says_where_to_resume(finished, tmp_path, monkeypatch):
    workdir = copy_run(finished, tmp_path)
    checkpoints_before = tree_digest(workdir / "checkpoints")

    def full_disk(self, step, scalars):
        if step > NUM_STEPS:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.jsonl_path)

    monkeypatch.setattr(writers.MetricWriter, "write_scalars", full_disk)
    config = small_config()
    config.num_steps = NUM_STEPS + 4
    with pytest.raises(OSError) as raised:
        train_and_evaluate(config, str(workdir))
    line = train_lib.error_line(raised.value)
    assert "No space left on device" in line and "metrics.jsonl" in line
    assert f"latest is step {NUM_STEPS} in {workdir / 'checkpoints'}: rerun to resume from it" in line
    assert "\n" not in line
    assert tree_digest(workdir / "checkpoints") == checkpoints_before
    assert not (workdir / writers.LOCK_NAME).exists()


def test_cli_reports_an_io_error_in_one_line(tmp_path):
    """The command line: a disk that fills while config.json is written (after the state is initialised)."""
    workdir = tmp_path / "run"
    code = (
        "import errno, os, sys\n"
        "from ocr_jax.training import train\n"
        "def full(workdir, config):\n"
        "  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(workdir, 'config.json'))\n"
        "train.write_run_config = full\n"
        "from ocr_jax.cli.train import run\n"
        f"sys.argv = ['train', '--config=toy_vae:quick', '--workdir={workdir}', '--config.task_config.hidden=8']\n"
        "run()\n"
    )  # config_flags reads the overrides from sys.argv
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: [Errno 28] No space left on device: ") and "config.json" in lines[-1]
    assert "No checkpoint had been saved yet." in lines[-1]
    assert sum(line.startswith("error:") for line in lines) == 1
    assert not (workdir / writers.LOCK_NAME).exists()


# ---- 6. A finished run says so and trains nothing. ------------------------------------------------------------------
def test_rerunning_a_finished_run_says_so_and_changes_nothing(finished, tmp_path, capsys):
    workdir = copy_run(finished, tmp_path)
    before = tree_digest(workdir)
    state = train_and_evaluate(small_config(), str(workdir))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{workdir} is already at step {NUM_STEPS} (num_steps={NUM_STEPS}): nothing to train"]
    jax.tree.map(np.testing.assert_array_equal, as_numpy(state), finished[1])
    assert tree_digest(workdir) == before  # no metrics, no config.json rewrite, no checkpoint
