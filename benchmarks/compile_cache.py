r"""What the persistent compilation cache saves a training run (benchmark, not a test).

Runs the training command three times in fresh processes and fresh work directories, each for a few steps of the
same config, and reports each one's wall-clock:

  off    ``--compilation_cache=none``: compiles everything, stores nothing (what a run cost before the cache);
  cold   an empty cache: compiles everything and stores it (a machine's first run of the config);
  warm   the cache ``cold`` filled, another seed (``--config.seed=1``): what a resumed run or the next seed costs.

  python benchmarks/compile_cache.py                      # SQAIR's CPU recipe, unrolled scans, three-frame sequences
  python benchmarks/compile_cache.py --config=air_multi_mnist:fast --set=--config.num_steps=3

The load average is recorded before and after: run it alone (a second busy process slows compilation many times).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "sqair_mnist:cpu+piwae+anneal+f1bound+offcanvas", "Config to train.")
_SET = flags.DEFINE_multi_string(
    "set",
    [
        "--config.num_steps=2",
        "--config.task_config.start_length=3",
        "--config.task_config.model.scan_unroll=True",
    ],
    "Extra flags of the training command (repeat the flag for several).",
)
_OUT = flags.DEFINE_string("out", "runs/bench/compile_cache.json", "Where the measurements are written.")


def _train(workdir: str, cache: str, extra: list[str]) -> float:
    """Seconds of wall-clock of one training command in a fresh process."""
    command = [
        sys.executable,
        "-m",
        "experiments.main",
        f"--config={_CONFIG.value}",
        f"--workdir={workdir}",
        f"--compilation_cache={cache}",
        "--config.progress_bar=False",
        "--config.eval_every=0",
        *_SET.value,
        *extra,
    ]
    t = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv):
    del argv
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        seconds = {
            "off": _train(os.path.join(tmp, "off"), "none", []),
            "cold": _train(os.path.join(tmp, "cold"), cache, []),
            "warm": _train(os.path.join(tmp, "warm"), cache, ["--config.seed=1"]),
        }
        cache_mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache) for f in fs) / 2**20
    result = dict(
        config=_CONFIG.value,
        flags=_SET.value,
        seconds={k: round(v, 1) for k, v in seconds.items()},
        off_over_warm=round(seconds["off"] / seconds["warm"], 2),
        cache_mb=round(cache_mb, 1),
        load_average_before=[round(x, 2) for x in load_before],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
    )
    print(json.dumps(result, indent=1))
    os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
    with open(_OUT.value, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    app.run(main)
