"""Check the speedup model against an eval: predicted vs measured speedup per run.

Reads ``records.jsonl`` of a `lookahead eval` folder (it needs an ``ar`` run), estimates the
model's inputs with `lookahead.speedup.from_eval_records` (acceptance per depth α, share of
complete draft steps p, draft cost c, target batch-cost curve b(k), verifier cost v, token-level
factors) and writes ``<folder>/speedup_model.json``: the inputs, and per run of our own modes the
predicted and measured speedup over ``ar`` with the relative error (``lr`` and ``lr+sd`` only:
``sd``'s factor is itself read from the ``sd`` run). Peer runs are left out (the
model describes our loop). Runs whose per-round depth is chosen online (``adaptive_gamma``) are
predicted at the γ they used most.

Example:
    .venv/bin/python scripts/bench_model.py docs/benchmarks/gsm8k-cpu-layers
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lookahead.errors import DataError
from lookahead.speedup import from_eval_records

OWN_MODES = ("ar", "sd", "lr", "lr+sd")


def _adaptive_gamma(records: list[dict[str, Any]]) -> int | None:
    """The γ an adaptive run used most, from the per-record ``gamma_rounds`` counts."""
    counts: Counter[int] = Counter()
    for r in records:
        for gamma, n in ((r.get("stats") or {}).get("gamma_rounds") or {}).items():
            counts[int(gamma)] += int(n)
    return counts.most_common(1)[0][0] if counts else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a lookahead eval output folder (records.jsonl)")
    args = parser.parse_args(argv)
    path = args.folder / "records.jsonl"
    if not path.is_file():
        print(f"error: {path} does not exist: give a `lookahead eval` output folder", file=sys.stderr)
        raise SystemExit(2)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    own = [r for r in records if r.get("mode") in OWN_MODES]
    try:
        inputs = from_eval_records(own)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    rows = []
    for row in inputs.compare():
        run_records = [r for r in own if r["run"] == row["run"]]
        if (run_records[0].get("overrides") or {}).get("adaptive_gamma"):
            used = _adaptive_gamma(run_records)
            if used is not None:
                row["gamma"] = used
                row["predicted"] = round(inputs.predict(row["mode"], used), 4)
                row["note"] = "adaptive: predicted at the γ it used most"
        if row["mode"] in ("ar", "sd"):
            row["note"] = "not a prediction: ar is the unit and sd's factor f is measured from this run"
        elif row["measured"]:
            row["error"] = round(row["predicted"] / row["measured"] - 1, 4)
        rows.append(row)
    fields = asdict(inputs)
    fields.pop("measured"), fields.pop("runs")
    report = {
        "command": " ".join(shlex.quote(a) for a in ["python", "scripts/bench_model.py", *(argv or sys.argv[1:])]),
        "records": str(path),
        "inputs": fields,
        "runs": rows,
        "max_abs_error": max((abs(r["error"]) for r in rows if "error" in r), default=None),
    }
    out = args.folder / "speedup_model.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for r in rows:
        print(f"{r['run']:<40} predicted {r['predicted']:.3f}  measured {r['measured'] or float('nan'):.3f}  "
              f"error {r.get('error', float('nan')):+.1%}")  # fmt: skip
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
