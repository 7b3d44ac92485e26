"""Where the studies put their results: ``<workdir>/results.json``, and the ending the toy studies share
(``gmm_pruning``, ``pcfg_study``, ``toy_gaussian_snr``): the wall time, results.json, then the plots."""

from __future__ import annotations

import json
import os
import time
from typing import Callable


def write_results(results: dict, workdir: str) -> str:
    """Writes ``results`` (JSON-able) to ``<workdir>/results.json`` atomically (a study interrupted while writing
    keeps its previous file); returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def finish_study(
    results: dict, cfg, workdir: str, plot: Callable[[dict, object, str], list], start_time: float, trained: bool = True
) -> dict:
    """Records the seconds since ``start_time`` in ``results["seconds"]`` (unless ``trained`` is False: a report
    keeps the seconds of the call that trained), writes results.json, draws the plots (``plot(results, cfg,
    workdir)`` -> their paths, kept in ``results["plots"]`` but not in the file), prints where everything went and
    returns ``results``."""
    if trained:
        results["seconds"] = time.time() - start_time
    path = write_results(results, workdir)
    results["plots"] = plot(results, cfg, workdir)
    print(f"done in {time.time() - start_time:.0f}s; wrote {path} and {results['plots']}")
    return results


def save_study_figure(fig, workdir: str, name: str, dpi: int = 100) -> str:
    """Lays out ``fig``, writes it as PNG to ``<workdir>/<name>``, closes it and returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = os.path.join(workdir, name)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def load_resumable_results(cfg, workdir: str, run_selectors) -> dict:
    """``<workdir>/results.json`` if it exists (its finished runs are kept), after checking that it was written with
    the same settings: every config field except ``run_selectors`` (the fields that only choose which runs to do, e.g.
    the methods and seeds, which may grow); else a new ``{"config": ..., "runs": {}}``."""
    path = os.path.join(workdir, "results.json")
    current = json.loads(cfg.to_json())
    results = {"config": current, "runs": {}}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        saved = results.get("config", {})
        differ = sorted(
            n for n in set(saved) | set(current) if n not in run_selectors and saved.get(n) != current.get(n)
        )
        if differ:
            raise ValueError(f"{path} holds runs of another config (fields {differ} differ); use a fresh --workdir")
    results["config"] = current
    results.setdefault("runs", {})
    return results
