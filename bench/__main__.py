"""Runs every benchmark module in bench/ (its main()), or only those named.

    python -m bench [NAME ...] [--no-save] [--report-only]

Modules are discovered, not listed: a new bench/<name>.py with a main() is run too. What a main()
returns (figures as dicts) is saved to bench/results/<name>.json unless --no-save. At the end one table
of every bench run is printed; a full run (no NAME) also writes it with a latency chart (bench/_report.py:
bench/results/report.md and latency.png), so that running one bench does not replace the full report with
a part of it; --report-only rebuilds them from the saved bench/results/<name>.json files.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    known = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all: {', '.join(known)})")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/<name>.json")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rebuild the report from the saved bench/results/<name>.json")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; known: {', '.join(known)}")
    from bench import _report

    if args.report_only:
        results = {}
        for name in args.names or known:
            saved = HERE / "results" / f"{name}.json"
            if saved.exists():
                results[name] = json.loads(saved.read_text(encoding="utf-8"))["result"]
        _report.write(results)
        return 0
    failed = []
    results: dict[str, object] = {}
    errors: dict[str, str] = {}
    for name in args.names or known:
        module = importlib.import_module(f"bench.{name}")
        if not callable(getattr(module, "main", None)):
            continue
        print(f"== bench.{name}", flush=True)
        started = time.perf_counter()
        try:
            result = module.main()
        except Exception as exc:  # one broken benchmark should not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
            continue
        results[name] = result
        print(f"== bench.{name}: {time.perf_counter() - started:.1f}s\n", flush=True)
        if not args.no_save and result is not None:
            _save(name, result)
    _report.write(results, errors, files=not args.names)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _save(name: str, result: object) -> None:
    folder = HERE / "results"
    folder.mkdir(exist_ok=True)
    record = {"bench": name, "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "python": sys.version.split()[0], "result": result}
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
