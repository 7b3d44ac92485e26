"""experiments/air_seeds.py: time-to-threshold bookkeeping from a run's metrics.jsonl."""

import json

import pytest

from experiments import air_seeds


def write_metrics(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_time_to_threshold_sums_compile_and_step_time_only(tmp_path):
    write_metrics(
        tmp_path / "metrics.jsonl",
        [
            {"step": 0, "compile_seconds": 10.0},
            {"step": 100, "steps_per_sec": 10.0},  # 10 s
            {"step": 200, "steps_per_sec": 5.0},  # 20 s
            {"step": 200, "eval/count_accuracy": 0.90},
            {"step": 400, "steps_per_sec": 20.0},  # 10 s
            {"step": 400, "eval/count_accuracy": 0.96},
            {"step": 600, "steps_per_sec": 20.0},
            {"step": 600, "eval/count_accuracy": 0.94},
        ],
    )
    curve = air_seeds.training_curve(str(tmp_path))
    assert [c["step"] for c in curve] == [200, 400, 600]
    assert [c["train_seconds"] for c in curve] == pytest.approx([40.0, 50.0, 60.0])
    s = air_seeds.summarise(curve, 0.95)
    assert s["reached"] and s["first_step"] == 400 and s["minutes_to_threshold"] == pytest.approx(50 / 60, abs=0.01)
    assert s["final_step"] == 600 and s["final_count_accuracy"] == 0.94
    assert not air_seeds.summarise(curve, 0.99)["reached"]


def test_resumed_run_does_not_double_count(tmp_path):
    # A resumed run logs a second compile and repeats no step; intervals are measured from the last logged step.
    write_metrics(
        tmp_path / "metrics.jsonl",
        [
            {"step": 0, "compile_seconds": 1.0},
            {"step": 100, "steps_per_sec": 100.0},
            {"step": 100, "compile_seconds": 1.0},
            {"step": 200, "steps_per_sec": 100.0},
            {"step": 200, "eval/count_accuracy": 1.0},
        ],
    )
    assert air_seeds.training_curve(str(tmp_path))[0]["train_seconds"] == pytest.approx(4.0)


@pytest.mark.slow  # ≈ 45 s on 2 busy cores; experiment-level, outside the default suite
def test_cli_stops_each_seed_at_the_threshold_and_skips_reached_seeds(tmp_path):
    """The CLI as a user runs it (a locked config from config_flags): with a threshold of 0 the first evaluation
    (step 20) meets it, so the seed stops there; a rerun skips it."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cmd = [
        sys.executable,
        "-m",
        "experiments.air_seeds",
        "--config=air_multi_mnist:quick",
        f"--workdir={tmp_path}",
        "--seeds=3",
        "--stop_at_threshold",
        "--threshold=0.0",
        "--config.eval_every=20",
        "--config.progress_bar=False",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for _ in range(2):
        result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads((tmp_path / "seeds.json").read_text())
        assert summary["reached"] == 1 and summary["per_seed"]["3"]["first_step"] == 20
        assert summary["per_seed"]["3"]["final_step"] == 20  # stopped at the first evaluation (num_steps is 60)
    assert sorted(os.listdir(tmp_path / "seed_3" / "checkpoints")) == ["20"]
