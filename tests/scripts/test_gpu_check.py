"""scripts/gpu_check.sh --dry-run on the CPU: every stage of the GPU check (install next to the existing jax, tests,
AIR and SQAIR steps/s, 1 vs 2 simulated devices, largest batch, AIR trained towards 95%) runs with tiny sizes and
writes what the device tool brings back. About a minute on a 2-core CPU, so it runs with ``-m slow`` (run it before
lending a device: ``bash scripts/test.sh -m slow tests/scripts/test_gpu_check.py``)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_dry_run_installs_without_touching_jax_and_records_every_stage(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "no_wheels").mkdir()  # the device's wheels are for its Python; here the environment has them all
    # A generous budget: the stages are skipped past it, and this machine's 2 cores may be shared.
    cmd = [
        "bash",
        os.path.join(REPO, "scripts", "gpu_check.sh"),
        "--dry-run",
        "--out",
        str(out),
        "--wheels",
        str(tmp_path / "no_wheels"),
        "--budget",
        "900",
    ]
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    env.pop("OUT", None)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    # At most 8 files, as the device tool returns them.
    assert sorted(os.listdir(out)) == [
        "air_to_95_metrics.jsonl",
        "gpu_check.json",
        "gpu_check.log",
        "install.json",
        "tests.json",
        "tests.log",
    ]
    results = json.load(open(out / "gpu_check.json"))
    install = results["install"]
    assert install["status"] == "ok" and install["jax_before"] == install["jax_after"]
    assert install["ocr_jax"].startswith(install["target"])  # the measurements ran against the installed package
    assert install["cli_help_lists_configs"] == "2" and install["not_importable"] == ""
    assert results["tests"]["rc"] == "0" and "passed" in results["tests"]["summary"]
    stages = ("env", "air_batch32", "sqair", "devices", "air_largest", "air_to_95")
    for name in stages:
        assert "error" not in results[name] and "skipped" not in results[name], (name, results[name])
    assert results["env"]["ocr_jax_file"].startswith(install["target"]) and results["env"]["device_count"] == 2
    assert results["air_batch32"]["batch"] == 32 and results["air_batch32"]["steps_per_s"] > 0
    assert results["air_batch32"]["memory"]["temp_size_in_bytes"] > 0
    assert [r["length"] for r in results["sqair"]["rows"]] == [1] and results["sqair"]["rows"][0]["steps_per_s"] > 0
    assert results["devices"]["one"]["devices"] == 1 and results["devices"]["all"]["devices"] == 2
    assert results["devices"]["all_vs_1_steps_per_s"] > 0
    assert results["air_largest"]["tried"] == [{"batch": 32, "ok": True}]
    assert results["air_largest"]["result"]["steps_per_s"] > 0
    to95 = results["air_to_95"]
    assert to95["final_step"] == 20 and [c["step"] for c in to95["curve"]] == [10, 20]
    assert 0 <= to95["final_count_accuracy"] <= 1 and to95["threshold"] == 0.95
    rows = [json.loads(line) for line in open(out / "air_to_95_metrics.jsonl")]
    assert any("eval/count_accuracy" in r for r in rows)
    assert "[gpu_check] measurements exit status 0" in open(out / "gpu_check.log").read()
