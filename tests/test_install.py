"""`pip install .` (not editable) gives a working training CLI with the configs by name, and no `experiments` package.

The package is built offline from a copy of its sources (no build isolation, no index, no dependencies) into a fresh
target directory, and run from another directory by a Python that sees only that directory and this environment's
dependencies: ``python -S`` skips site-packages and with it the editable install of this checkout.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target directory, environment) of a non-editable install of this checkout."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"  # pip builds in the source tree: build from a copy so the checkout stays clean
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    shutil.copytree(os.path.join(REPO, "ocr_jax"), src / "ocr_jax", ignore=shutil.ignore_patterns("__pycache__"))
    target = root / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(target),
        str(src),
    ]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    deps = sysconfig.get_paths()["purelib"]  # this environment's site-packages, for the dependencies only
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), deps]), JAX_PLATFORMS="cpu")
    (root / "elsewhere").mkdir()
    return target, env, root / "elsewhere"


def run(installed, *args, timeout=300):
    _, env, cwd = installed
    return subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_install_holds_the_library_configs_and_entry_point_only(installed):
    target = installed[0]
    top = {p for p in os.listdir(target) if not p.endswith(".dist-info")}
    assert top == {"ocr_jax", "bin"}, top  # no top-level `experiments` (or `tests`, `benchmarks`) package
    assert sorted(p[:-3] for p in os.listdir(target / "ocr_jax" / "configs") if p.endswith(".py")) == [
        "__init__",
        "air_multi_mnist",
        "gmm_pruning",
        "mnist_bounds",
        "pcfg",
        "sqair_mnist",
        "toy_gaussian_convergence",
        "toy_gaussian_snr",
        "toy_vae",
        "vrnn_mnist",
    ]
    assert (target / "bin" / "ocr-jax-train").exists()
    out = run(
        installed,
        "-c",
        "import importlib.util, ocr_jax; print(ocr_jax.__file__); print(importlib.util.find_spec('experiments'))",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    where, experiments = out.stdout.split()
    assert where.startswith(str(target)) and experiments == "None"


@pytest.mark.slow  # about a minute: one AIR compile and a few steps on 2 busy CPU cores
def test_installed_cli_trains_quick_air_by_config_name_from_another_directory(installed):
    target, _, cwd = installed
    script = str(target / "bin" / "ocr-jax-train")
    helped = run(installed, script, "--help")
    assert "air_multi_mnist: nvil, ww, reinforce" in " ".join(helped.stdout.split()), helped.stderr[-2000:]
    workdir = cwd / "runs" / "air"
    out = run(
        installed,
        script,
        "--config=air_multi_mnist:quick",
        "--workdir=runs/air",
        "--config.num_steps=4",
        "--config.log_every=2",
        "--config.eval_every=4",
        "--config.checkpoint.every=4",
        "--config.progress_bar=False",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.listdir(workdir / "checkpoints") == ["4"]
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert [r["step"] for r in rows if "count_accuracy" in r] == [2, 4]
    assert any("eval/count_accuracy" in r and r["step"] == 4 for r in rows)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard"))
    assert json.load(open(workdir / "config.json"))["task"] == "air"
