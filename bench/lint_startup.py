"""Whole-process time of `plangate lint plans.yaml`, against `python -c pass` with the same interpreter.

What a CI job pays per lint: interpreter start, imports, reading and checking the plan. The baseline
(an empty interpreter start) and the import-only cost are measured in the same run, interleaved with
the lint runs, so that a busy or slow machine shows in all three. Goal (issue 2): median well under
500 ms.

    python -m bench.lint_startup [-n 20] [--plan plans.yaml]

`main()` prints the figures and returns them as one row (a dict) for the bench runner.
"""
from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_MS = 500.0
WARMUP = 2


def _plangate() -> list[str]:
    """The installed console script next to this interpreter, as CI runs it; else the module."""
    script = Path(sys.executable).parent / "plangate"
    return [str(script)] if script.exists() else [sys.executable, "-m", "plangate.cli"]


def _run_ms(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return elapsed


def _p90(samples: list[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def measure(runs: int = 20, plan: str = "plans.yaml") -> dict:
    commands = {
        "lint": _plangate() + ["lint", plan],
        "imports": [sys.executable, "-c", "import plangate.cli, plangate.policy.cli"],
        "baseline": [sys.executable, "-c", "pass"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(WARMUP + runs):
        for name, argv in commands.items():
            elapsed = _run_ms(argv)
            if i >= WARMUP:
                samples[name].append(elapsed)
    row: dict = {"bench": "lint_startup", "runs": runs, "plan": plan}
    for name, values in samples.items():
        row[f"{name}_median_ms"] = round(statistics.median(values), 1)
        row[f"{name}_p90_ms"] = round(_p90(values), 1)
    row["ratio"] = round(row["lint_median_ms"] / row["baseline_median_ms"], 2)
    row["goal_ms"] = GOAL_MS
    row["ok"] = row["lint_median_ms"] < GOAL_MS
    return row


def print_row(row: dict) -> None:
    print(f"{'':<22}{'median ms':>10}{'p90 ms':>10}")
    for name, text in (("lint", f"plangate lint {row['plan']}"), ("imports", "import the lint modules"),
                       ("baseline", "python -c pass")):
        print(f"{text:<22}{row[f'{name}_median_ms']:>10.1f}{row[f'{name}_p90_ms']:>10.1f}")
    verdict = "within" if row["ok"] else "OVER"
    print(f"lint / baseline: {row['ratio']:.2f}x over {row['runs']} runs; "
          f"{verdict} the goal of {row['goal_ms']:.0f} ms (median)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.lint_startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=20, help="measured runs of each command (default 20)")
    parser.add_argument("--plan", default="plans.yaml", help="plan file, relative to the repository root")
    args = parser.parse_args([] if argv is None else argv)
    row = measure(max(1, args.runs), args.plan)
    print_row(row)
    return row


if __name__ == "__main__":
    main(sys.argv[1:])
