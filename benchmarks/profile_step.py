r"""Where a train step's time goes: any config's compiled step traced with ``jax.profiler``, its XLA operations'
self time summed by the model scope that issued them (not a test).

  python benchmarks/profile_step.py --config=air_multi_mnist:fast [--steps=10] [--top=20] [--start_step=0]
      [--out=runs/bench/profile_step.json] [--config.global_batch_size=64 ...]
  python benchmarks/profile_step.py --workdir=runs/sqair_conv_short_seed0 [--steps=10]   # a trained run's step

The step is built exactly as training builds it (``tasks.make_task``, ``make_optimizers``, ``make_train_step``) on the
task's own training batches from ``--start_step`` (which sets e.g. SQAIR's curriculum length) — or, with
``--workdir``, from a trained run's config.json, latest checkpoint step and parameters — compiled, warmed up, then
``--steps`` steps are traced. Every event on XLA's compute threads is an operation of the compiled program (a fusion,
a dot, a copy) or the runtime around it; its *self* time (its duration less that of the events nested in it) is summed
per operation, then per **scope**: the operation's ``op_name`` metadata from the compiled HLO with JAX's
transformation wrappers removed — e.g. ``AIRInference.controller/controller/hidden`` — and a **phase**: ``forward``,
``backward`` (under ``transpose(...)``) or ``update`` (the optimiser, inside the step's ``cond``). Operations XLA
created without metadata (layout copies, broadcasts of constants) are listed under their kind (``copy``,
``wrapped_broadcast``…).

The wall-clock per step is printed beside the summed self time: their ratio is how many cores the step keeps busy.
Run it alone: a second busy process distorts both (the load average is recorded before and after).
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

import jax
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.append(REPO)  # benchmarks/ from the checkout when run as a script

from benchmarks.air_throughput import compile_train_step, with_params  # noqa: E402
from ocr_jax import api, cli, configs  # noqa: E402
from ocr_jax.training import tasks  # noqa: E402

_WRAPPER = re.compile(r"^(jit|jvp|transpose|vmap|pjit|remat|checkpoint|custom_jvp_call|custom_vjp_call)\((.*)\)$")
# Loop and conditional plumbing in op_name paths; the first component (the jitted step) is dropped as well.
_SKIP = ("while", "body", "cond", "eval_jaxpr", "closed_call")
_BRANCH = re.compile(r"branch_\d+_fun")


def hlo_metadata(hlo_text: str) -> dict[str, str]:
    """``{instruction name: op_name}`` of every HLO instruction that carries ``op_name`` metadata."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"", hlo_text, re.M):
        out[m.group(1)] = m.group(2)
    return out


def _unwrap(component: str) -> str:
    """``jvp(vmap(AIRInference.controller))`` -> ``AIRInference.controller``."""
    while (m := _WRAPPER.match(component)) is not None:
        component = m.group(2)
    return component


def scope_and_phase(op_name: str) -> tuple[str, str]:
    """The model scope and phase of an ``op_name``: the path with JAX's wrappers, loop plumbing and the final
    primitive removed, and ``update`` inside the train step's conditional, ``backward`` under a ``transpose``,
    ``forward`` otherwise.

    >>> scope_and_phase("jit(train_step)/transpose(jvp(vmap(AIRInference.controller)))/controller/hidden/dot_general")
    ('AIRInference.controller/controller/hidden', 'backward')
    """
    parts = op_name.split("/")
    # The optimiser runs in the train step's own conditional (directly under jit(train_step)); a model's switch
    # (SQAIR's present-only decoder) is deeper and keeps its phase.
    phase = "update" if parts[1:3] == ["cond", "branch_1_fun"] else "forward"
    if phase == "forward" and "transpose(" in op_name:
        phase = "backward"
    kept = [c for c in (_unwrap(p) for p in parts[1:-1]) if c and c not in _SKIP and not _BRANCH.fullmatch(c)]
    return "/".join(kept) or "(train step)", phase


def self_times(xplane_path: str) -> tuple[collections.Counter, collections.Counter]:
    """Self time (ns) and count of every event name on XLA's compute threads of a trace."""
    from jax.profiler import ProfileData

    plane = ProfileData.from_file(xplane_path).find_plane_with_name("/host:CPU")
    if plane is None:
        raise RuntimeError(f"no /host:CPU plane in {xplane_path}; this profiler reads CPU traces")
    total, count = collections.Counter(), collections.Counter()
    for line in plane.lines:
        if not line.name.startswith("tf_XLA"):
            continue
        events = sorted(line.events, key=lambda e: (e.start_ns, -e.duration_ns))
        own, stack = [e.duration_ns for e in events], []
        for i, e in enumerate(events):
            while stack and events[stack[-1]].end_ns <= e.start_ns:
                stack.pop()
            if stack:
                own[stack[-1]] -= e.duration_ns
            stack.append(i)
        for e, t in zip(events, own):
            if "wait for completion" in e.name or e.name.startswith("end: "):
                continue
            total[e.name] += t
            count[e.name] += 1
    return total, count


def profile(config, steps: int, start_step: int = 0, params=None) -> dict:
    """Traces ``steps`` compiled train steps of ``config``; returns the per-step breakdown. ``params`` (e.g. a trained
    run's) replace the initial parameters: what a model computes can depend on them (SQAIR decodes only the present
    glimpses)."""
    compiled, state, local, _ = compile_train_step(
        tasks.make_task(config), config, start_step=start_step, num_batches=4
    )
    if params is not None:
        state = with_params(state, params)
    metadata = hlo_metadata(compiled.as_text())
    for i in range(3):  # warm-up
        state, metrics = compiled(state, local[i % len(local)], jax.random.PRNGKey(i))
    jax.block_until_ready(metrics)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        t = time.perf_counter()
        for i in range(steps):
            state, metrics = compiled(state, local[i % len(local)], jax.random.PRNGKey(100 + i))
        jax.block_until_ready(metrics)
        wall = (time.perf_counter() - t) / steps
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb"))
        total, count = self_times(path)
    by_scope = collections.Counter()
    ops = []
    for name, ns in total.items():
        op_name = metadata.get(name)
        if op_name is None:
            kind = re.sub(r"[.\d]+$", "", name)
            key = ("(runtime)", "") if "::" in name else (f"({kind}, no metadata)", "")
        else:
            key = scope_and_phase(op_name)
        by_scope[key] += ns
        ops.append(dict(op=name, ms_per_step=ns / 1e6 / steps, calls_per_step=count[name] / steps, op_name=op_name))
    busy = sum(total.values()) / 1e6 / steps
    return dict(
        wall_ms_per_step=wall * 1e3,
        busy_ms_per_step=busy,
        cores_busy=busy / (wall * 1e3),
        scopes=[
            dict(scope=s, phase=p, ms_per_step=ns / 1e6 / steps, share=ns / 1e6 / steps / busy)
            for (s, p), ns in by_scope.most_common()
        ],
        ops=sorted(ops, key=lambda o: -o["ms_per_step"]),
    )


def main(argv):
    cli.start_script(argv)
    load_before = os.getloadavg()
    config, start_step, params = _CONFIG.value, _START_STEP.value, None
    if _WORKDIR.value:
        run = api.load_run(_WORKDIR.value)
        config, start_step, params = run.config.copy_and_resolve_references(), run.step, run.params
    elif config is None:
        raise app.UsageError("give --config or --workdir")
    result = profile(config, _STEPS.value, start_step, params)
    result.update(
        config=config.to_dict(),
        workdir=_WORKDIR.value,
        start_step=start_step,
        load_before=load_before,
        load_after=os.getloadavg(),
    )
    print(
        f"{result['wall_ms_per_step']:.1f} ms per step wall-clock, {result['busy_ms_per_step']:.1f} ms of XLA thread "
        f"time ({result['cores_busy']:.2f} cores busy); load average {load_before[0]:.2f} before, "
        f"{result['load_after'][0]:.2f} after"
    )
    print(f"\n{'ms/step':>8} {'share':>6}  phase     scope")
    for row in result["scopes"][: _TOP.value]:
        print(f"{row['ms_per_step']:8.2f} {row['share']:6.1%}  {row['phase']:9s} {row['scope']}")
    print(f"\n{'ms/step':>8} {'calls':>5}  operation (op_name)")
    for row in result["ops"][: _TOP.value]:
        print(f"{row['ms_per_step']:8.2f} {row['calls_per_step']:5.0f}  {row['op']} ({row['op_name'] or '-'})")
    out = _OUT.value
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=float)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    _CONFIG = configs.define_config_flag("config", None, "the config whose train step is profiled", lock_config=True)
    _WORKDIR = flags.DEFINE_string(
        "workdir", None, "profile a trained run instead: its config.json, latest step and parameters"
    )
    _STEPS = flags.DEFINE_integer("steps", 10, "traced steps (after three warm-up steps)")
    _START_STEP = flags.DEFINE_integer("start_step", 0, "the training step the profiled batches and state are at")
    _TOP = flags.DEFINE_integer("top", 20, "rows printed per table")
    _OUT = flags.DEFINE_string("out", "runs/bench/profile_step.json", "where the full breakdown goes (JSON)")
    app.run(main)
