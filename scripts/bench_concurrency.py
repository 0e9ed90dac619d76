"""Throughput and latency of `ar` vs `lr` with K problems in flight over a Ray engine pool.

For each replica count R (target and draft each get R actors), the same GSM8K test questions
run through `lookahead.scheduler.run_many` at each concurrency K, in `ar` and in `lr`. Per
setting it reports problems/min, completion tokens/s, mean and p90 latency per problem (seconds
from a problem's start to its result), how many target rows one pool call carried on average
(merging), and whether every text equals the K=1 text of the same mode (greedy output must not
depend on what else is in the batch). Writes ``OUT.json`` (the command at the top) and
``OUT.png``.

Run it on the real models only where the lead says so (CPU: minutes per setting). The
``--config tiny`` run uses the scripted fake engines and checks the plumbing in seconds.

Example:
    .venv/bin/python scripts/bench_concurrency.py --limit 16 --out docs/benchmarks/concurrency
    .venv/bin/python scripts/bench_concurrency.py --config tiny --limit 4 --out /tmp/concurrency-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lookahead import LookaheadReasoner, load_config
from lookahead.answers import answers_match
from lookahead.eval.tasks import load_example
from lookahead.scheduler import Job, run_many


def run_setting(reasoner: LookaheadReasoner, questions: list[str], references: list[str], mode: str, k: int) -> dict[str, Any]:
    """One (mode, concurrency) measurement over all questions."""
    target = reasoner.target
    calls_before, rows_before = target.stats.calls, target.stats.rows
    start = time.perf_counter()
    outcomes = run_many(reasoner, [Job(q, mode=mode) for q in questions], concurrency=k)
    wall = time.perf_counter() - start
    done = [o for o in outcomes if o.ok]
    tokens = sum(o.result.completion_tokens for o in done)
    latencies = sorted(o.latency_s for o in done)
    calls = target.stats.calls - calls_before
    return {
        "mode": mode,
        "concurrency": k,
        "problems": len(questions),
        "failed": len(outcomes) - len(done),
        "errors": sorted({f"{type(o.error).__name__}: {o.error}" for o in outcomes if not o.ok})[:3],
        "wall_s": round(wall, 3),
        "problems_per_min": round(60 * len(done) / wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "completion_tokens": tokens,
        "mean_latency_s": round(statistics.fmean(latencies), 3) if latencies else None,
        "p90_latency_s": round(latencies[int(0.9 * (len(latencies) - 1))], 3) if latencies else None,
        "target_calls": calls,
        "target_rows_per_call": round((target.stats.rows - rows_before) / calls, 2) if calls else None,
        "correct": sum(answers_match(o.result.answer, references[o.index]) for o in done),
        "texts": [o.result.text if o.ok else None for o in outcomes],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="preset name or YAML file (default: the embedded pair)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--limit", type=int, default=16, help="number of GSM8K test questions (rows 0..N-1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16], help="problems in flight")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="actors per engine (target, draft)")
    parser.add_argument("--modes", nargs="+", default=["ar", "lr"], choices=["ar", "lr"], help="modes to compare")
    parser.add_argument("--data-dir", default=None, help="folder with gsm8k/test.jsonl (default ../shared/data)")
    parser.add_argument("--out", default="docs/benchmarks/concurrency", help="output path without extension")
    args = parser.parse_args(argv)

    examples = [load_example("gsm8k", i, args.data_dir) for i in range(args.limit)]
    questions = [e.question for e in examples]
    references = [e.reference for e in examples]
    rows: list[dict[str, Any]] = []
    engines: dict[str, str] = {}
    for replicas in args.replicas:
        cfg = load_config(args.config, [*args.overrides, f"target.replicas={replicas}", f"draft.replicas={replicas}"])
        with LookaheadReasoner.from_config(cfg) as reasoner:
            # pool names read "poolR:ENGINE"; keep ENGINE
            engines = {side: getattr(reasoner, side).name.split(":", 1)[-1] for side in ("target", "draft")}
            for mode in args.modes:  # warm-up: model loads and first-call costs out of the timings
                run_many(reasoner, [Job(questions[0], mode=mode, overrides={"max_total_tokens": 32})], concurrency=1)
            for mode in args.modes:
                baseline: list[str | None] | None = None
                for k in args.concurrency:
                    row = {"replicas": replicas, **run_setting(reasoner, questions, references, mode, k)}
                    texts = row.pop("texts")
                    baseline = baseline or texts
                    row["same_text_as_first_k"] = sum(a == b and a is not None for a, b in zip(texts, baseline, strict=False))
                    rows.append(row)
                    print(
                        f"replicas={replicas} mode={mode} K={k}: {row['problems_per_min']:.2f} problems/min, "
                        f"{row['tokens_per_s']:.1f} tok/s, latency {row['mean_latency_s']} s, "
                        f"{row['target_rows_per_call']} rows/call, failed {row['failed']}",
                        file=sys.stderr,
                    )
                    write_report(args, argv, engines, rows)  # after every setting: an interrupted run keeps what it measured
    report = write_report(args, argv, engines, rows)
    out = Path(args.out)
    plot(report, out.with_suffix(".png"))
    best = max(rows, key=lambda r: r["problems_per_min"])
    print(json.dumps({"out": str(out.with_suffix(".json")), "settings": len(rows), "best": {
        k: best[k] for k in ("replicas", "mode", "concurrency", "problems_per_min", "tokens_per_s")
    }}))
    return report


def write_report(args: argparse.Namespace, argv: list[str] | None, engines: dict[str, str], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write OUT.json with every setting measured so far and return the report."""
    report = {
        "command": " ".join(shlex.quote(a) for a in ["python", "scripts/bench_concurrency.py", *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "config": args.config,
        "overrides": args.overrides,
        "engines": engines,
        "task": "gsm8k test",
        "problems": args.limit,
        "note": "latency = seconds from a problem's start on a worker to its result; "
        "same_text_as_first_k counts problems whose text equals the first concurrency's text (same mode, replicas)",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in report["rows"]:
        series.setdefault((row["replicas"], row["mode"]), []).append(row)
    for (replicas, mode), rows in sorted(series.items()):
        ks = [r["concurrency"] for r in rows]
        style = "o-" if mode == "lr" else "s--"
        label = f"{mode}, {replicas} replica{'s' if replicas > 1 else ''}"
        left.plot(ks, [r["problems_per_min"] for r in rows], style, label=label)
        right.plot(ks, [r["mean_latency_s"] for r in rows], style, label=label)
    for ax, title, ylabel in (
        (left, "throughput", "problems / min"),
        (right, "mean latency per problem", "seconds"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("problems in flight (concurrency)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} ({report['problems']} GSM8K problems, {report['engines'].get('target', '')})", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
