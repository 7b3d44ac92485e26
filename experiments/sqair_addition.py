"""What limits a trained SQAIR run's addition accuracy (§5.D.4, issue #13): the classifier's training data, or the
representation it reads.

    python -m experiments.sqair_addition --workdir=runs/sqair_f1b --train_sequences=2000,10000,20000

Runs the frozen model once on the largest number of training sequences and on the run's test split (the best of
``eval.num_particles`` particles, the same keys as ``experiments.sqair_report``), then:
  * the addition experiment (``ocr_jax.evaluation.sqair.addition_experiment``: z_what·z_pres of the slots in identity
    order, 19-way MLP) for each number of training sequences and each number of classifier steps;
  * a probe of the representation: the digit's class (10-way, the same MLP) from the one object's z_what, in frames
    with one visible digit and one present object; then that probe read on every present object of the test frames
    and summed (:func:`sum_of_digit_readings`): the addition the representation supports object by object.
Writes ``<workdir>/addition_study.json`` (with ``--posterior_means``, z_what read at its posterior mean:
``addition_study_means.json``) and prints it. The model's outputs are kept in
``<workdir>/addition_outputs[_means]_step<step>_train<n>.npz`` (0.14 GB for 20 000 training sequences, measured; never
committed), so that a second sweep of classifier steps reads them instead of running the model again.

    python -m experiments.sqair_addition --workdir=runs/sqair_short_velocity_seed0 --posterior_means \
        --train_sequences=20000 --classifier_steps=10000,100000,1000000
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags, logging

from ocr_jax import api
from ocr_jax.evaluation import sqair as sqair_eval
from ocr_jax.tasks.sqair import load_sequences


def define_flags() -> None:
    """The command line (defined only when run as a script, so that importing this module defines no flag)."""
    flags.DEFINE_string("workdir", None, "A trained SQAIR run.", required=True)
    flags.DEFINE_list("train_sequences", ["2000", "10000", "20000"], "Training sequences for the classifier.")
    flags.DEFINE_list("classifier_steps", ["10000", "40000"], "Classifier training steps.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_integer("probe_steps", None, "Training steps of the digit probe (default: the most classifier steps).")
    flags.DEFINE_bool(
        "posterior_means", False, "Read z_what at its posterior mean (SQAIR.infer's posterior_means), not a sample."
    )


def digit_probe_data(outputs: dict, data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frames with exactly one visible digit and exactly one present object -> (that object's ``z_what [n, Dw]``, the
    digit's label ``[n]``)."""
    z_what, z_pres = np.asarray(outputs["z_what"]), np.asarray(outputs["z_pres"])
    presence = np.asarray(data["presence"], bool)  # [S, T, D]
    frames = (presence.sum(-1) == 1) & (z_pres.sum(-1) == 1)
    features = (z_what * z_pres[..., None]).sum(-2)[frames]
    labels = np.broadcast_to(np.asarray(data["labels"])[:, None, :], presence.shape)
    digit = np.take_along_axis(labels, np.argmax(presence, -1)[..., None], -1)[..., 0]
    return features, digit[frames]


def sum_of_digit_readings(outputs: dict, data: dict, read_digit) -> dict:
    """The addition read one object at a time: every present object's digit read from its z_what by ``read_digit``
    (``z_what [k, Dw] -> digits [k]``, e.g. the probe) and summed over the frame, against
    :func:`~ocr_jax.evaluation.sqair.addition_targets`. What the representation holds for addition when the read-out
    need not learn that a sum is symmetric and additive from the slot-ordered concatenation.

    Returns ``accuracy``, ``accuracy_by_visible_digits`` (keyed by the number of digits visible in the frame) and
    ``object_count_matches`` (the fraction of frames whose number of present objects is the number of visible digits).
    """
    z_what, present = np.asarray(outputs["z_what"]), np.asarray(outputs["z_pres"]) > 0  # [S, T, N, Dw], [S, T, N]
    presence = np.asarray(data["presence"]) > 0  # [S, T, D]
    digits = np.zeros(present.shape, np.int64)
    if present.any():
        digits[present] = read_digit(z_what[present])
    correct = digits.sum(-1) == sqair_eval.addition_targets(data["labels"], presence)
    visible = presence.sum(-1)
    return dict(
        accuracy=float(correct.mean()),
        accuracy_by_visible_digits={str(g): float(correct[visible == g].mean()) for g in np.unique(visible)},
        object_count_matches=float(np.mean(present.sum(-1) == visible)),
    )


def study(
    workdir: str,
    train_sequences: list[int],
    classifier_steps: list[int],
    step: int | None,
    posterior_means: bool = False,
    probe_steps: int | None = None,
) -> dict:
    run = api.load_run(workdir, step=step)
    task = run.task
    cfg = task.config
    test = task.test_data
    train = load_sequences(cfg, "train", max(train_sequences), cfg.data_seed)
    cache = os.path.join(
        workdir,
        f"addition_outputs{'_means' if posterior_means else ''}_step{run.step}_train{max(train_sequences)}.npz",
    )
    if os.path.exists(cache):
        with np.load(cache) as f:
            train_out, test_out = ({k[len(p) :]: f[k] for k in f.files if k.startswith(p)} for p in ("train/", "test/"))
    else:
        key = jax.random.key(run.step)  # as experiments.sqair_report
        train_key = jax.random.fold_in(key, sqair_eval.TRAIN_KEY_FOLD)
        infer = dict(posterior_means=posterior_means)
        train_out = sqair_eval.best_particle_outputs(task, run.params, train["frames"], train_key, **infer)
        test_out = sqair_eval.best_particle_outputs(task, run.params, test["frames"], key, **infer)
        arrays = {
            f"{p}{k}": np.asarray(v) for p, out in (("train/", train_out), ("test/", test_out)) for k, v in out.items()
        }
        np.savez(cache, **arrays)
    truth = ("labels", "presence")
    result = dict(
        step=run.step, num_test_sequences=int(len(test["frames"])), posterior_means=posterior_means, addition=[]
    )
    for m in train_sequences:
        for steps in classifier_steps:
            r = sqair_eval.addition_experiment(
                {k: v[:m] for k, v in train_out.items()},
                {k: train[k][:m] for k in truth},
                test_out,
                {k: test[k] for k in truth},
                steps=steps,
                progress=None,
            )
            keys = ("train_accuracy", "test_accuracy", "test_accuracy_by_group", "test_frames_by_group")
            row = dict(train_sequences=m, classifier_steps=steps, **{k: r[k] for k in keys})
            print(row, flush=True)
            result["addition"].append(row)
    (x_tr, y_tr), (x_te, y_te) = digit_probe_data(train_out, train), digit_probe_data(test_out, test)
    probe = dict(train_frames=int(len(y_tr)), test_frames=int(len(y_te)), train_accuracy=None, test_accuracy=None)
    result["sum_of_probe_readings"] = None
    if len(y_tr) and len(y_te):  # (an untrained model may have no such frame)
        r = sqair_eval.train_addition_classifier(
            x_tr, y_tr, x_te, y_te, num_classes=10, steps=probe_steps or max(classifier_steps), return_predictor=True
        )
        probe.update({k: r[k] for k in ("train_accuracy", "test_accuracy")})
        result["sum_of_probe_readings"] = sum_of_digit_readings(test_out, test, r["predict"])
    result["digit_from_one_z_what"] = probe
    present = np.asarray(train_out["z_pres"]) > 0
    result["z_what_std_over_objects"] = np.asarray(train_out["z_what"])[present].std(0).round(3).tolist()
    return result


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    fl = flags.FLAGS
    result = study(
        fl.workdir,
        [int(x) for x in fl.train_sequences],
        [int(x) for x in fl.classifier_steps],
        fl.step,
        fl.posterior_means,
        fl.probe_steps,
    )
    name = "addition_study_means.json" if fl.posterior_means else "addition_study.json"
    with open(os.path.join(fl.workdir, name), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "z_what_std_over_objects"}, indent=1))


if __name__ == "__main__":
    define_flags()
    app.run(main)
