"""Check the speedup model against an eval: predicted vs measured speedup per run.

Reads ``records.jsonl`` of a `lookahead eval` folder (it needs an ``ar`` run) and writes
``<folder>/speedup_model.json``: the model's inputs estimated from the records (acceptance per
depth α, share of complete draft steps p, draft cost c, target batch-cost curve b(k), verifier
cost v, token-level factors) and, per run of our own modes, the predicted and measured speedup
over ``ar`` with the relative error (``lr`` and ``lr+sd`` only). The logic is
`lookahead.eval.bench.speedup_model`, which ``lookahead bench`` reports for every run it makes.

Example:
    .venv/bin/python scripts/bench_model.py docs/benchmarks/gsm8k-cpu-layers
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from lookahead.errors import DataError
from lookahead.eval.bench import speedup_model


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a lookahead eval output folder (records.jsonl)")
    args = parser.parse_args(argv)
    path = args.folder / "records.jsonl"
    if not path.is_file():
        print(f"error: {path} does not exist: give a `lookahead eval` output folder", file=sys.stderr)
        raise SystemExit(2)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        model = speedup_model(records)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    command = " ".join(shlex.quote(a) for a in ["python", "scripts/bench_model.py", *(argv or sys.argv[1:])])
    report = {"command": command, "records": str(path), **model}
    out = args.folder / "speedup_model.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for r in report["runs"]:
        predicted = "   -  " if r["predicted"] is None else f"{r['predicted']:.3f}"
        measured = "   -  " if r["measured"] is None else f"{r['measured']:.3f}"
        error = f"error {r['error']:+.1%}" if "error" in r else r.get("note", "")
        print(f"{r['run']:<40} predicted {predicted}  measured {measured}  {error}")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
