"""docs/DESIGN.md's worked example (a new model trained with three estimators) runs as printed and learns: the
mixture weights each estimator learns are within 0.03 of the truth (their spread over seeds is ≈ 0.01)."""

import os
import re

import numpy as np

DESIGN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "DESIGN.md")


def worked_example() -> str:
    text = open(DESIGN).read()
    section = text[text.index("## Worked example") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_worked_example_is_short_and_learns_with_three_estimators(capsys):
    code = worked_example()
    assert len([line for line in code.splitlines() if line.strip()]) < 40  # lines of code, blank lines aside
    namespace = {"__name__": "design_example"}
    exec(compile(code, "DESIGN.md worked example", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in printed] == ["vimco", "ww", "reinforce"]
    truth = np.asarray(namespace["TRUE_WEIGHTS"])
    for line in printed:
        learned = np.array([float(v) for v in re.findall(r"[-+]?\d*\.\d+(?:e[-+]?\d+)?", line)])
        assert learned.shape == (3,) and np.abs(learned - truth).max() < 0.03, line
