"""How good is a draft for its target? Per-step cost ratio c, step acceptance by depth, lr vs ar.

Runs ``lookahead eval`` on GSM8K test questions with ``ar`` and ``lr`` at several lookahead
depths (greedy, exact verifier), then reads its records and adds what the eval table does not:

- **c**, the per-step cost ratio: draft seconds per drafted step / target seconds per committed
  step of the ``ar`` run (both from the same invocation, same questions). Also per token.
- **step acceptance by depth** under the exact verifier (what the loop decided) and under the
  embedding verifier, re-judging the same recorded (draft step, target step) pairs offline: the
  rate the embedding verifier would give the pairs the exact runs produced (pairs exist up to the
  first rejection of each round, so deeper depths have fewer pairs).
- the eval's own figures per run: speedup vs ar, answer agreement with ar, accuracy, time split.

Writes ``<out>/draft.json`` and ``<out>/draft.png`` next to the eval's files. Example::

    .venv/bin/python scripts/bench_draft.py --limit 30 --out docs/benchmarks/draft-cpu
    .venv/bin/python scripts/bench_draft.py --out docs/benchmarks/draft-cpu --report-only
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

RUNS = "ar,lr[gamma=1],lr[gamma=2],lr[gamma=4]"


def read_records(folder: Path) -> list[dict]:
    rows = []
    for line in (folder / "records.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if r.get("status") == "ok"]


def cost_ratio(records: list[dict], count_draft_tokens=None) -> dict:
    """c per step (and per token, given the draft's token counter), from lr's draft time and ar's target time.

    Per token uses only the lr rows whose every drafted step is in the trace (true at γ = 1,
    where each round's single draft step is recorded with its fallback).
    """
    ar = [r for r in records if r["mode"] == "ar"]
    lr = [r for r in records if r["mode"] == "lr"]
    target_steps = sum(len(r["trace"]) for r in ar)
    target_tokens = sum(r["completion_tokens"] for r in ar)
    target_s = sum(r["target_s"] for r in ar)
    drafted = sum(r["drafted_steps"] for r in lr)
    draft_s = sum(r["draft_s"] for r in lr)
    per_step_target = target_s / target_steps if target_steps else None
    per_step_draft = draft_s / drafted if drafted else None
    out = {
        "target_s_per_step": per_step_target,  # seconds per committed step, ar run
        "draft_s_per_step": per_step_draft,  # seconds per drafted step, lr runs
        "c_per_step": per_step_draft / per_step_target if per_step_target and per_step_draft else None,
        "target_s_per_token": target_s / target_tokens if target_tokens else None,
    }
    complete = [r for r in lr if r["drafted_steps"] == sum(1 for step in r["trace"] if step["draft"])]
    if count_draft_tokens is not None and complete and target_tokens:
        tokens = sum(count_draft_tokens(step["draft"]) for r in complete for step in r["trace"] if step["draft"])
        out["draft_s_per_token"] = sum(r["draft_s"] for r in complete) / tokens
        out["c_per_token"] = out["draft_s_per_token"] / out["target_s_per_token"]
    return out


def acceptance_by_depth(records: list[dict], judge=None) -> dict[str, dict[str, float]]:
    """Per run and depth: pairs and the share accepted (by the recorded verdict or by ``judge``)."""
    pairs: dict[str, dict[int, list[tuple[str, str, bool]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for step in r.get("trace", []):
            if step["draft"] is not None and step["target"] is not None and step["accepted"] is not None:
                pairs[r["run"]][step["depth"]].append((step["draft"], step["target"], step["accepted"]))
    out: dict[str, dict[str, float]] = {}
    for run, depths in pairs.items():
        out[run] = {}
        for depth, items in sorted(depths.items()):
            if judge is None:
                accepted = [a for _, _, a in items]
            else:
                verdicts = judge.verify([""] * len(items), [d for d, _, _ in items], [t for _, t, _ in items])
                accepted = [v.accepted for v in verdicts]
            out[run][str(depth)] = {"pairs": len(items), "accepted": round(sum(accepted) / len(items), 4)}
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    runs = [r for r in report["runs"]]
    labels = [r["label"] for r in runs]
    speed = [r["speedup"] or 0 for r in runs]
    left.bar(labels, speed, color=["#888"] + ["#2a7"] * (len(labels) - 1))
    left.axhline(1.0, color="k", lw=0.8, ls="--")
    left.set_ylabel("speedup vs ar (wall time)")
    c = report["cost"].get("c_per_step")
    left.set_title(f"lr vs ar on {report['problems']} GSM8K test questions (c = {c:.2f})" if c else "lr vs ar")
    for verifier, style in (("exact", "-o"), ("embedding", "--s")):
        for run, depths in report["acceptance_by_depth"][verifier].items():
            xs = [int(d) for d in depths]
            right.plot(xs, [depths[d]["accepted"] for d in depths], style, label=f"{run} · {verifier}")
    right.set_xlabel("lookahead depth")
    right.set_ylabel("step acceptance")
    right.set_ylim(0, 1)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=30, help="GSM8K test questions")
    parser.add_argument("--runs", default=RUNS, help="eval run specs")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/draft-cpu"))
    parser.add_argument("--config", default="default")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="config override key=value")
    parser.add_argument("--report-only", action="store_true", help="only read an existing eval folder")
    args = parser.parse_args()
    if args.report_only and not (args.out / "summary.json").is_file():
        parser.error(f"--report-only needs an eval folder with records.jsonl and summary.json; {args.out} has none")
    eval_cmd = [sys.executable, "-m", "lookahead.cli", "eval", "--task", "gsm8k", "--limit", str(args.limit),
                "--modes", args.runs, "--out", str(args.out), "--config", args.config, "--no-plots"]
    for item in args.sets:
        eval_cmd += ["--set", item]
    if not args.report_only:
        code = subprocess.call(eval_cmd)
        if code != 0:
            return code
    records = read_records(args.out)
    summary = json.loads((args.out / "summary.json").read_text())
    from transformers import AutoTokenizer

    from lookahead.config import load_config
    from lookahead.engines.hf import resolve_model
    from lookahead.verifiers.embedding import EmbeddingVerifier

    draft_tokenizer = AutoTokenizer.from_pretrained(resolve_model(load_config(args.config, args.sets).draft).source)

    report = {
        "command": " ".join(shlex.quote(a) for a in ["python", "scripts/bench_draft.py", *sys.argv[1:]]),
        "eval_command": " ".join(shlex.quote(a) for a in ["lookahead", *eval_cmd[3:]]),
        "problems": summary["problems_with_records"],
        "cost": cost_ratio(records, lambda text: len(draft_tokenizer(text, add_special_tokens=False).input_ids)),
        "acceptance_by_depth": {
            "exact": acceptance_by_depth(records),
            "embedding": acceptance_by_depth(records, EmbeddingVerifier()),
        },
        "runs": [
            {k: run.get(k) for k in ("label", "accuracy", "speedup", "speedup_median", "tokens_per_s", "step_acceptance",
                                     "steps_per_round", "agreement_with_ar", "time_split_s", "mean_completion_tokens")}
            for run in summary["runs"]
        ],
    }
    (args.out / "draft.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "draft.png")
    print(json.dumps(report["cost"], indent=2))
    for run in report["runs"]:
        print(run["label"], "speedup", run["speedup"], "agreement", run["agreement_with_ar"], "accuracy", run["accuracy"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
