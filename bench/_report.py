"""One report from every benchmark's rows: a table printed, the same as Markdown, and a chart of the latency
distributions, under bench/results/ (report.md, latency.png). See bench/README.md for how to read it.

Each bench's rows are normalized to common keys: what, figure, unit, baseline, baseline_what, ratio, goal,
met (and note where there is something to add). A bench missing from the run or failed shows as a row
that is not met.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from collections.abc import Callable
from bench._columns import columns

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _row(what, figure, unit, baseline=None, baseline_what="", ratio=None, goal="", met=None, note="") -> dict:
    return {"what": what, "figure": figure, "unit": unit, "baseline": baseline, "baseline_what": baseline_what,
            "ratio": ratio, "goal": goal, "met": met, "note": note}


def _http_gate(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        ep = r["endpoint"]
        if "cpu_vs_check" in r:     # issue 19: CPU a request against a plain check's, in the same run
            out.append(_row(f"{ep}, gate CPU per request vs a plain check", r["gate_cpu_us"], "us",
                            round(r["gate_cpu_us"] / r["cpu_vs_check"], 1) if r["cpu_vs_check"] else None,
                            "plain /v1/check, same run", r["cpu_vs_check"], r["goal"], r["met"],
                            f"{r['gate_rps']} req/s; p50/p99 {r['gate_p50_ms']}/{r['gate_p99_ms']} ms"))
            continue
        goal_ratio = r["goal"].split(",")[0]
        n = r.get("subjects", 4)
        floor_rps = r.get("floor_rps", r["bare_rps"])
        out.append(_row(f"{ep} throughput, {n} subjects, gate vs uvloop+orjson floor", r["gate_rps"], "req/s",
                        floor_rps, "floor (uvloop, orjson, dict)", r["ratio"], goal_ratio,
                        r["ratio"] >= float(goal_ratio.split(">=")[1]) and not r["gate_errors"],
                        f"gate/bare (asyncio, stdlib json) {r.get('ratio_bare', '-')}; cpu us/req gate "
                        f"{r['gate_cpu_us']}, floor {r.get('floor_cpu_us', '-')}, bare {r['bare_cpu_us']}"))
        if "p99<" in r["goal"]:
            limit = float(r["goal"].split("p99<")[1].rstrip("ms"))
            floor_p99 = r.get("floor_p99_ms", r["bare_p99_ms"])
            out.append(_row(f"{ep} p99 latency, {n} subjects, 32 connections", r["gate_p99_ms"], "ms", floor_p99,
                            "floor p99", round(r["gate_p99_ms"] / floor_p99, 2) if floor_p99 else None,
                            f"< {limit:g} ms", r["gate_p99_ms"] < limit,
                            f"1 connection: p99 {r.get('gate_p99_ms_1conn', '-')} ms "
                            f"(floor {r.get('floor_p99_ms_1conn', '-')}); "
                            f"paced, ~{r.get('gate_rps_paced', '-')} req/s: p99 {r.get('gate_p99_ms_paced', '-')} ms "
                            f"(floor {r.get('floor_p99_ms_paced', '-')})"))
    return out


def _engine_decision(rows: list[dict]) -> list[dict]:
    return [_row(f"engine decision: {r['case']}", r["ns_per_decision"], "ns", r["baseline_ns"], "dict lookup",
                 r["ratio"], f"~{r['goal_ns']:.0f} ns (<= {r['goal_ns'] * 1.2:.0f})" if r["goal_ns"] < 1500 else
                 f"< {r['goal_ns']:.0f} ns", r["meets_goal"]) for r in rows]


def _webhook_ingest(rows: list[dict]) -> list[dict]:
    return [_row(f"webhook ingest, SQLite synchronous={r['synchronous']}", r["events_per_s"], "events/s",
                 r["bare_rps"], "bare aiohttp, same bodies", r["ratio"], r["goal"], r["met"],
                 f"p50/p99 {r['p50_ms']}/{r['p99_ms']} ms" + ("" if r["clean"] else "; NOT clean")) for r in rows]


def _sweep(rows: list[dict]) -> list[dict]:
    return [_row(f"sweep, {r['subjects']:,} subjects, {r['due']:,} due (median)", r["sweep_median_ms"], "ms",
                 r["baseline_median_ms"], "plain indexed SELECT", r["ratio"], f"< {r['goal_ms']:g} ms", r["met"],
                 f"read {r['due_median_ms']} ms, commit {r['commit_batch_median_ms']} ms, "
                 f"engine+logs {r['engine_and_logs_median_ms']} ms") for r in rows]


def _postgres_consume(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if r.get("skipped"):
            out.append(_row(r["what"], None, "", goal=r["goal"], met=False, note=f"skipped: {r['skipped']}"))
        elif "rps" in r:
            against = r.get("baseline_what", "bare aiohttp")
            note = (f"rt/req {r['round_trips_per_request']}, " if "round_trips_per_request" in r else "") + \
                   f"cpu us/req gate {r['gate_cpu_us']} pg {r['postgres_cpu_us']} ({against}: " \
                   f"{r.get('bare_cpu_us')} / {r.get('bare_postgres_cpu_us', '-')}), busy {r['machine_busy_pct']}%" + \
                   (f"; {r['floor_ratio']} of the floor" if "floor_ratio" in r and against != "the one-upsert floor"
                    else "") + \
                   (f"; {r['store_errors']} store errors, {r['fail_mode_answers']} fail-mode answers"
                    if r.get("store_errors") or r.get("fail_mode_answers") else "")
            out.append(_row(f"{r['what']}, vs {against}", r["rps"], "req/s", r["bare_rps"], against,
                            r["ratio"], r["goal"], r["met"], note))
        else:
            for p in ("p50", "p99"):
                out.append(_row(f"cross-node invalidation delay {p}", r[f"{p}_ms"], "ms", goal="< 1000 ms",
                                met=r["met"], note=f"{r['seen']}/{r['samples']} seen, {r['lost']} lost"))
    return out


def _webhook_abuse(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if r["phase"] == "idle":
            continue
        answered = ", ".join(f"{k} {v}" for k, v in r["abuse"].items() if v)
        out.append(_row(f"/v1/check p99 during webhook abuse: {r['phase']}", r["p99_ms"], "ms", r["idle_p99_ms"],
                        "same probe, gate idle", r["ratio"], r["goal"], r["met"],
                        f"{r['checks']} checks, max {r['max_ms']} ms; abuse: {answered}"
                        + ("" if r["clean"] else "; NOT clean") +
                        (f"; {r['events_stored_after_all']} events stored" if r.get("events_stored_after_all")
                         else "")))
    return out


def _lint_startup(result: dict | list) -> list[dict]:
    rows = result if isinstance(result, list) else [result]
    return [_row(f"plangate lint {r['plan']} (median process time)", r["lint_median_ms"], "ms",
                 r["baseline_median_ms"], "python -c pass", r["ratio"], f"< {r['goal_ms']:g} ms", r["ok"],
                 f"imports alone {r['imports_median_ms']} ms") for r in rows]


def _console(rows: list[dict]) -> list[dict]:
    return [_row(f"console: {r['what']}, {r['subjects']:,} subjects", r["median_ms"], "ms", r["baseline_ms"],
                 "bare POST /v1/check", r["ratio"], f"< {r['goal_ms']:g} ms" if r["goal_ms"] else "", r["ok"],
                 f"p90 {r['p90_ms']} ms, {r['runs']} runs") for r in rows]


NORMALIZERS: dict[str, Callable] = {"console": _console, "http_gate": _http_gate, "engine_decision": _engine_decision,
                                    "webhook_ingest": _webhook_ingest, "webhook_abuse": _webhook_abuse,
                                    "sweep": _sweep, "postgres_consume": _postgres_consume,
                                    "lint_startup": _lint_startup, "local_check": list, "check_in_process": list}
ORDER = ("http_gate", "check_in_process", "local_check", "postgres_consume", "engine_decision", "webhook_ingest",
         "webhook_abuse", "sweep", "lint_startup")


def normalize(results: dict[str, object], failed: dict[str, str] | None = None) -> list[dict]:
    rows = []
    for name in sorted(set(results) | set(failed or {}), key=lambda n: (ORDER.index(n) if n in ORDER else 99, n)):
        if failed and name in failed:
            rows.append(_row(f"{name}: FAILED", None, "", met=False, note=failed[name]))
            continue
        normalizer = NORMALIZERS.get(name)
        if normalizer is None:
            continue
        try:
            rows.extend(normalizer(results[name]))
        except (KeyError, TypeError, ValueError) as exc:
            rows.append(_row(f"{name}: rows not understood", None, "", met=False, note=repr(exc)))
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    return str(value)


def _cells(r: dict) -> tuple:
    figure = f"{_fmt(r['figure'])} {r['unit']}".strip() if r["figure"] is not None else "-"
    baseline = f"{_fmt(r['baseline'])} {r['unit']} ({r['baseline_what']})" if r["baseline"] is not None else "-"
    met = {True: "met", False: "NOT met", None: "-"}[r["met"]]
    return (r["what"], figure, baseline, _fmt(r["ratio"]), r["goal"], met)


def _summary(rows: list[dict]) -> str:
    """How many rows with a goal meet it (a row that only shows a figure has none)."""
    held = [r for r in rows if r["met"] is not None]
    return f"{sum(1 for r in held if r['met'])} of {len(held)} rows with a goal meet it."


HEAD = ("what", "figure", "same-run baseline", "ratio", "goal", "")


def text_table(rows: list[dict]) -> str:
    return columns([HEAD] + [_cells(r) for r in rows])


def markdown(rows: list[dict], at: str) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    out = [f"# plangate benchmarks ({at})", "",
           "How to read this: bench/README.md. Ratios are against a baseline measured in the same run.", "",
           "| " + " | ".join(HEAD[:-1] + ("met", "notes")) + " |", "|" + "---|" * (len(HEAD) + 1)]
    for r in rows:
        out.append("| " + " | ".join(esc(c) for c in _cells(r)) + f" | {esc(r['note'])} |")
    out += ["", _summary(rows), "", "![latency distributions](latency.png)", ""]
    return "\n".join(out)


# --- the chart -----------------------------------------------------------------------------------

def _series(results: dict[str, object]) -> list[tuple[str, list[tuple[str, list]]]]:
    """(panel title, [(label, [[percentile, ms], ...]), ...]) for every latency distribution in the results."""
    panels = []
    for r in results.get("http_gate") or []:
        if r.get("gate_latency_dist"):
            panels.append((f"{r['endpoint']} (http_gate, 32 connections, {r.get('subjects', 4)} subjects)",
                           [("gate", r["gate_latency_dist"]), ("floor", r.get("floor_latency_dist")),
                            ("bare aiohttp", r.get("bare_latency_dist"))]))
    for endpoint in ("consume", "check"):
        measured = [r for r in results.get("postgres_consume") or []
                    if r.get("latency_dist") and r.get("endpoint", "consume") == endpoint]
        if measured:
            load = "many subjects" if endpoint == "consume" else "4 subjects"
            panels.append((f"/v1/{endpoint} by store (postgres_consume, {load})",
                           [(r["what"].replace(f"/v1/{endpoint} on ", ""), r["latency_dist"]) for r in measured]
                           + [("bare aiohttp", measured[0].get("bare_latency_dist"))]))
    for r in results.get("webhook_ingest") or []:
        if r.get("latency_dist"):
            panels.append((f"webhook ingest (synchronous={r['synchronous']})",
                           [("gate", r["latency_dist"]), ("bare aiohttp", r.get("bare_latency_dist"))]))
    abuse = [(r["phase"], r["latency_dist"]) for r in results.get("webhook_abuse") or [] if r.get("latency_dist")]
    if abuse:
        panels.append(("/v1/check during webhook abuse (webhook_abuse, 1 probe connection)", abuse))
    for r in results.get("postgres_consume") or []:
        if r.get("delays_ms"):
            n = len(r["delays_ms"])
            panels.append((f"cross-node invalidation delay ({n} samples)",
                           [("A committed -> B sees it",
                             [[100 * (i + 1) / n, d] for i, d in enumerate(r["delays_ms"])])]))
    return panels


def chart(results: dict[str, object], path: Path) -> Path | None:
    """Latency CDFs, one panel per measured endpoint; None when there is nothing to draw or no matplotlib."""
    panels = _series(results)
    if not panels:
        return None
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib not installed (pip install -e '.[bench]'): no chart", flush=True)
        return None
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.8 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        for label, dist in series:
            if not dist:
                continue
            xs = [max(ms, 1e-3) for _, ms in dist]
            ys = [p for p, _ in dist]
            ax.step(xs, ys, where="post", label=label, marker=".", markersize=3)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("latency, ms (log)")
        ax.set_ylabel("percentile")
        ax.set_ylim(0, 100.5)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("plangate: latency distributions (cumulative; further left is faster)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(results: dict[str, object], failed: dict[str, str] | None = None, files: bool = True) -> str:
    """Print the table and, if `files`, write report.md and latency.png; returns the table text."""
    rows = normalize(results, failed)
    at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    table = text_table(rows)
    print(f"\n== report ({at}, {os.cpu_count()} CPUs)\n{table}\n")
    summary = _summary(rows)
    if not files:
        print(f"{summary} (a partial run: bench/results/report.md and latency.png left as they were)", flush=True)
        return table
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report.md").write_text(markdown(rows, at), encoding="utf-8")
    png = chart(results, RESULTS / "latency.png")
    print(f"{summary} Written: {(RESULTS / 'report.md').relative_to(HERE.parent)}"
          + (f", {png.relative_to(HERE.parent)}" if png else ""), flush=True)
    return table
