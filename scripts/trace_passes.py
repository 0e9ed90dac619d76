"""Where an in-process eval's time goes, forward pass by forward pass: the check behind the simulator's models.

Runs ``lookahead eval`` (its arguments after ``--``) in this process with every forward pass of the
HF engines timed (`HFEngine._forward`, `_forward_all`) and every join of a running decode loop
(`HFEngine._join`), then writes one JSON file:

- ``passes``: per engine and kind (``decode``: one token per row; ``verification``: a token-level
  speculation pass, 1 + proposed tokens per row; ``prefill``: a wider pass outside a join; ``join``:
  a forward pass inside a join) the count, seconds, and mean rows and width;
- ``verification_by_tokens``: the target's verification passes (the engine with the most seconds of
  them) grouped by the tokens they feed (rows x width), their mean seconds, and (with
  ``--profile``) what the profile's curve gives for a decode step of that many rows and what the
  simulator charges under each ``spec_pass`` model;
- ``joins``: the joins' wall seconds against the forward passes inside them (the rest is copying the
  batch's KV cache and Python);
- ``torch_thread``: seconds from the first to the last forward pass against the seconds in forward
  passes (the rest: Python between passes, and idle).

Run it with one speculating run (``--modes sd``) to check the verification-pass model: the simulator
charges every pass of a speculating call as a verification pass, so the totals compare the target's
verification and plain passes together against both ``spec_pass`` models. The eval's warm-up
passes are left out when the run joins (they come before the first join).

Example (the check quoted in ``lookahead profile``'s ``spec_pass`` source):
    python scripts/trace_passes.py --out docs/benchmarks/simulate-cpu/passes-k8.json \\
        --profile docs/benchmarks/simulate-cpu/profile.yaml -- \\
        --task gsm8k --limit 16 --set max_total_tokens=128 --concurrency 8 --modes sd --out /tmp/trace-eval
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import platform
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

REAL = time.perf_counter  # the eval never replaces it; kept in case a simulation in-process does


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: trace_passes.py --out FILE [--profile YAML] -- <lookahead eval arguments>", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--profile", type=Path, help="a profile whose target curve to put next to the passes")
    args = parser.parse_args(argv[:cut])
    eval_args = argv[cut + 1 :]
    if not eval_args:
        print("give the lookahead eval arguments after --", file=sys.stderr)
        return 2
    costs = None
    if args.profile is not None:  # read before the eval runs: a bad profile must not cost a whole eval
        from lookahead.errors import ConfigError
        from lookahead.simulate.profile import load_profile

        try:
            costs = load_profile(str(args.profile)).target
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    events = record_passes()
    from lookahead.cli import app

    try:
        app(["eval", *eval_args], prog_name="lookahead")  # a bad eval argument gets the eval's own one-line error
    except SystemExit as exc:
        if exc.code:
            return int(exc.code)
    report = summarize(events, costs, str(args.profile) if args.profile else None)
    report["command"] = "python scripts/trace_passes.py " + shlex.join(argv)
    report["machine"] = f"{platform.platform()}, {platform.machine()}, python {platform.python_version()}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def record_passes() -> list[dict[str, Any]]:
    """Patch the HF engine so that every forward pass and join appends an event; the list they go to."""
    from lookahead.engines.hf import engine as hf

    events: list[dict[str, Any]] = []
    lock = threading.Lock()

    def add(**event: Any) -> None:
        with lock:
            events.append(event)

    forward, forward_all, join = hf.HFEngine._forward, hf.HFEngine._forward_all, hf.HFEngine._join

    def timed_forward(self, input_ids, attention_mask, position_ids, cache, keep=None, model=None):  # noqa: ANN001
        start = REAL()
        out = forward(self, input_ids, attention_mask, position_ids, cache, keep, model)
        add(kind="forward", engine=self.name, t=start, s=REAL() - start, rows=int(input_ids.shape[0]), width=int(input_ids.shape[1]))
        return out

    def timed_forward_all(self, input_ids, attention_mask, position_ids, cache):  # noqa: ANN001
        start = REAL()
        out = forward_all(self, input_ids, attention_mask, position_ids, cache)
        add(kind="verification", engine=self.name, t=start, s=REAL() - start, rows=int(input_ids.shape[0]), width=int(input_ids.shape[1]))
        return out

    def timed_join(self, batch, requests):  # noqa: ANN001
        start = REAL()
        join(self, batch, requests)
        if requests:
            add(kind="join", engine=self.name, t=start, s=REAL() - start, rows=sum(len(r.prompts) for r in requests), width=0)

    hf.HFEngine._forward, hf.HFEngine._forward_all, hf.HFEngine._join = timed_forward, timed_forward_all, timed_join
    return events


def summarize(events: list[dict[str, Any]], costs: Any = None, profile: str | None = None) -> dict[str, Any]:
    """The report (module docstring) of ``events``; ``costs``: the target's `EngineCosts` of the profile
    named ``profile``, to put its models next to the passes."""
    joins = [e for e in events if e["kind"] == "join"]
    start = min((e["t"] for e in joins), default=min((e["t"] for e in events), default=0.0)) - 1e-6
    events = [e for e in events if e["t"] >= start]
    joins = [e for e in events if e["kind"] == "join"]
    passes = [e for e in events if e["kind"] != "join"]

    def inside_join(e: dict[str, Any]) -> bool:
        return any(j["engine"] == e["engine"] and j["t"] <= e["t"] <= j["t"] + j["s"] for j in joins)

    groups: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for e in passes:
        kind = "join" if inside_join(e) else e["kind"] if e["kind"] == "verification" else "decode" if e["width"] == 1 else "prefill"
        groups[(e["engine"], kind)].append(e)
    table = [
        {"engine": engine, "kind": kind, "passes": len(es), "seconds": round(sum(e["s"] for e in es), 3),
         "mean_ms": round(1000 * sum(e["s"] for e in es) / len(es), 2),
         "mean_rows": round(sum(e["rows"] for e in es) / len(es), 2), "mean_width": round(sum(e["width"] for e in es) / len(es), 2)}
        for (engine, kind), es in sorted(groups.items())
    ]
    in_joins = sum(e["s"] for (_, kind), es in groups.items() if kind == "join" for e in es)
    report: dict[str, Any] = {
        "passes": table,
        "joins": {"count": len(joins), "wall_s": round(sum(j["s"] for j in joins), 3), "forward_s": round(in_joins, 3),
                  "other_ms_per_join": round(1000 * (sum(j["s"] for j in joins) - in_joins) / max(len(joins), 1), 2)},
        "torch_thread": {
            "span_s": round(max((e["t"] + e["s"] for e in passes), default=0.0) - min((e["t"] for e in passes), default=0.0), 3),
            "forward_s": round(sum(e["s"] for e in passes), 3),
        },
    }
    if costs is not None:
        compute_bound = dataclasses.replace(costs, spec_pass="compute-bound")
        report["profile"] = profile
    # the target's: the engine with the most seconds of verification passes (a draft that speculates too is cheaper)
    spent: dict[str, float] = collections.Counter()
    for (engine, kind), es in groups.items():
        if kind == "verification":
            spent[engine] += sum(e["s"] for e in es)
    target = max(spent, key=spent.__getitem__) if spent else None
    report["target"] = target
    verifications = [e for (engine, kind), es in groups.items() if kind == "verification" and engine == target for e in es]
    by_tokens: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in verifications:
        by_tokens[e["rows"] * e["width"]].append(e)
    rows_out = []
    for tokens, es in sorted(by_tokens.items()):
        rows = sum(e["rows"] for e in es) / len(es)
        entry: dict[str, Any] = {"tokens": tokens, "passes": len(es), "mean_rows": round(rows, 2),
                                 "mean_ms": round(1000 * sum(e["s"] for e in es) / len(es), 2)}
        if costs is not None:
            entry["curve_ms_at_tokens_rows"] = round(1000 * costs.step_s(tokens), 2)
            entry["memory_bound_ms"] = round(1000 * costs.spec_step_cost * costs.step_s(rows), 2)
            entry["compute_bound_ms"] = round(1000 * compute_bound.verify_s(rows), 2)
        rows_out.append(entry)
    report["verification_by_tokens"] = rows_out
    if verifications:
        total = sum(e["s"] for e in verifications)
        report["verification_totals"] = {"passes": len(verifications), "seconds": round(total, 3)}
        if costs is not None:
            totals = report["verification_totals"]
            totals["curve_at_tokens_fed_s"] = round(sum(costs.step_s(e["rows"] * e["width"]) for e in verifications), 3)
            # the simulator charges every pass of a speculating call (plain ones too) as a verification pass:
            # with a run whose every target call speculates (sd), those are the target's decode passes too
            spec_passes = verifications + [e for (engine, kind), es in groups.items() if kind == "decode" and engine == target for e in es]
            memory_bound = dataclasses.replace(costs, spec_pass="memory-bound")
            totals["speculating_passes"] = len(spec_passes)
            totals["speculating_passes_s"] = round(sum(e["s"] for e in spec_passes), 3)
            totals["memory_bound_s"] = round(sum(memory_bound.verify_s(e["rows"]) for e in spec_passes), 3)
            totals["compute_bound_s"] = round(sum(compute_bound.verify_s(e["rows"]) for e in spec_passes), 3)
    return report


if __name__ == "__main__":
    sys.exit(main())
