"""The main job (`bash scripts/main.sh`): for now, build the datasets and draw samples with their boxes.

Writes pictures and `timings.json` under `${WORKDIR:-runs/main}`. Extra arguments go to `experiments.build_datasets`
(e.g. `bash scripts/main.sh --small`). Once AIR lands, this job trains AIR instead.
"""

from __future__ import annotations

import os
import sys

from experiments import build_datasets


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    workdir = os.environ.get("WORKDIR", "runs/main")
    if "--out" not in argv:
        argv = ["--out", workdir, *argv]
    return build_datasets.main(argv)


if __name__ == "__main__":
    main()
