"""The report scripts' command line (experiments/report_cli.py): without --config a report uses the run's own
config.json; with --config the given one."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = """
import sys
from experiments.report_cli import run_report
run_report(lambda config, workdir: {"task": config.task, "num_steps": config.num_steps}, config_help="config")
"""


def _report(*args):
    out = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_report_reads_the_runs_own_config_unless_told_otherwise(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "toy_vae", "num_steps": 7}))
    assert _report(f"--workdir={tmp_path}") == {"task": "toy_vae", "num_steps": 7}
    given = _report(f"--workdir={tmp_path}", "--config=toy_vae:quick", "--config.num_steps=3")
    assert given == {"task": "toy_vae", "num_steps": 3}
    missing = subprocess.run(
        [sys.executable, "-c", SCRIPT, f"--workdir={tmp_path / 'nothing'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode != 0 and "does not exist" in missing.stderr
