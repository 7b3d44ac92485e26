"""experiments/air_seeds.py: time-to-threshold bookkeeping from a run's metrics.jsonl."""

import json

import pytest

from experiments import air_seeds


def write_metrics(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_time_to_threshold_sums_compile_and_step_time_only(tmp_path):
  write_metrics(tmp_path / "metrics.jsonl", [
      {"step": 0, "compile_seconds": 10.0},
      {"step": 100, "steps_per_sec": 10.0},  # 10 s
      {"step": 200, "steps_per_sec": 5.0},  # 20 s
      {"step": 200, "eval/count_accuracy": 0.90},
      {"step": 400, "steps_per_sec": 20.0},  # 10 s
      {"step": 400, "eval/count_accuracy": 0.96},
      {"step": 600, "steps_per_sec": 20.0},
      {"step": 600, "eval/count_accuracy": 0.94},
  ])
  curve = air_seeds.training_curve(str(tmp_path))
  assert [c["step"] for c in curve] == [200, 400, 600]
  assert [c["train_seconds"] for c in curve] == pytest.approx([40.0, 50.0, 60.0])
  s = air_seeds.summarise(curve, 0.95)
  assert s["reached"] and s["first_step"] == 400 and s["minutes_to_threshold"] == pytest.approx(50 / 60, abs=0.01)
  assert s["final_step"] == 600 and s["final_count_accuracy"] == 0.94
  assert not air_seeds.summarise(curve, 0.99)["reached"]


def test_resumed_run_does_not_double_count(tmp_path):
  # A resumed run logs a second compile and repeats no step; intervals are measured from the last logged step.
  write_metrics(tmp_path / "metrics.jsonl", [
      {"step": 0, "compile_seconds": 1.0}, {"step": 100, "steps_per_sec": 100.0},
      {"step": 100, "compile_seconds": 1.0}, {"step": 200, "steps_per_sec": 100.0},
      {"step": 200, "eval/count_accuracy": 1.0}])
  assert air_seeds.training_curve(str(tmp_path))[0]["train_seconds"] == pytest.approx(4.0)
