"""Side-by-side `ar` vs `lr` on GSM8K test questions, plus the target's batched-call cost curve.

Same questions, same config, same process: for each question `ar` and `lr` run back to back
(alternating which goes first), and the texts are compared. Then one target step is timed at
batch sizes 1..4 (the γ+1 continuations of a round share a prefix) relative to batch 1.
Writes JSON (with the command at the top) and a PNG.

Example:
    .venv/bin/python scripts/compare_modes.py --limit 5 --out docs/benchmarks/foundation-cpu
    .venv/bin/python scripts/compare_modes.py --limit 3 --set gamma=3 --set max_total_tokens=128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from tqdm import tqdm

from lookahead import LookaheadReasoner, load_config
from lookahead.config import SamplingParams
from lookahead.eval.tasks import load_example


def batch_cost_curve(reasoner: LookaheadReasoner, question: str, tokens: int, repeats: int) -> list[dict]:
    """Seconds for one target call of `tokens` new tokens at batch 1..4, rows sharing a prefix.

    With `pad_batches` on (the default) the engine decodes 2-3 live rows at a larger, cheaper
    batch size where the measured curve says so. Batch sizes are measured round-robin (so machine noise hits all of them alike) and the best of
    `repeats` is kept. Before each timed call the prefix cache is pointed at the bare prompt, so
    every size reuses the same prompt KV and pays for its own suffixes and decode.
    """
    target = reasoner.target
    prompt = target.format_chat([{"role": "user", "content": question}])
    suffixes = ["", "First, ", "Let me think. ", "We know that "]
    params = SamplingParams(temperature=0.0, max_new_tokens=tokens)
    best = {batch: float("inf") for batch in range(1, 5)}
    produced: dict[int, list[int]] = {}
    for _ in range(repeats):
        for batch in range(1, 5):
            target.generate([prompt + "x"], SamplingParams(max_new_tokens=1))  # reset the prefix cache
            start = time.perf_counter()
            out = target.generate([prompt + s for s in suffixes[:batch]], params, stop=[])
            best[batch] = min(best[batch], time.perf_counter() - start)
            produced[batch] = [c.completion_tokens for c in out]
    return [
        {"batch": b, "seconds": round(s, 4), "tokens_per_row": produced[b], "relative_to_batch1": round(s / best[1], 3)}
        for b, s in best.items()
    ]


def compare(reasoner: LookaheadReasoner, limit: int, data_dir: str | None) -> list[dict]:
    """``ar`` and ``lr`` back to back on GSM8K test rows 0..limit-1 (alternating which goes first)."""
    rows = []
    for i in tqdm(range(limit), desc="questions", unit="q"):
        example = load_example("gsm8k", i, data_dir)
        order = ("ar", "lr") if i % 2 == 0 else ("lr", "ar")
        results = {mode: reasoner.generate(example.question, mode=mode) for mode in order}
        ar, lr = results["ar"], results["lr"]
        rows.append(
            {
                "index": i,
                "reference": example.reference,
                "ar_answer": ar.answer,
                "lr_answer": lr.answer,
                "same_text": ar.text == lr.text,
                "completion_tokens": {"ar": ar.completion_tokens, "lr": lr.completion_tokens},
                "wall_time_s": {"ar": round(ar.wall_time_s, 3), "lr": round(lr.wall_time_s, 3)},
                "lr_stats": lr.stats,
                "ar_rounds": ar.rounds,
                "ar_target_s": ar.stats["target_s"],
            }
        )
    return rows


def summarize(rows: list[dict], curve: list[dict]) -> dict:
    """Totals over the questions: time, speedup, tokens/s, identical texts, acceptance, time split."""
    ar_total = sum(r["wall_time_s"]["ar"] for r in rows)
    lr_total = sum(r["wall_time_s"]["lr"] for r in rows)
    drafted = sum(r["lr_stats"]["drafted_steps"] for r in rows)
    accepted = sum(r["lr_stats"]["accepted_steps"] for r in rows)
    return {
        "questions": len(rows),
        "ar_total_s": round(ar_total, 2),
        "lr_total_s": round(lr_total, 2),
        "lr_speedup_vs_ar": round(ar_total / lr_total, 3),
        "ar_tokens_per_s": round(sum(r["completion_tokens"]["ar"] for r in rows) / ar_total, 2),
        "lr_tokens_per_s": round(sum(r["completion_tokens"]["lr"] for r in rows) / lr_total, 2),
        "identical_texts": sum(r["same_text"] for r in rows),
        "step_acceptance": round(accepted / drafted, 3) if drafted else 0.0,
        "lr_draft_s": round(sum(r["lr_stats"]["draft_s"] for r in rows), 2),
        "lr_target_s": round(sum(r["lr_stats"]["target_s"] for r in rows), 2),
        "lr_verify_s": round(sum(r["lr_stats"]["verify_s"] for r in rows), 3),
        "lr_other_s": round(sum(r["lr_stats"]["other_s"] for r in rows), 3),
        "ar_target_s": round(sum(r["ar_target_s"] for r in rows), 2),
        "lr_target_cached_tokens": sum(r["lr_stats"]["target_cached_tokens"] for r in rows),
        "lr_target_prompt_tokens": sum(r["lr_stats"]["target_prompt_tokens"] for r in rows),
        "batch_cost_relative": [c["relative_to_batch1"] for c in curve],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=5, help="number of GSM8K test questions (rows 0..N-1)")
    parser.add_argument("--config", default="default", help="preset name or YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--data-dir", default=None, help="folder with gsm8k/test.jsonl (default ../shared/data)")
    parser.add_argument("--batch-tokens", type=int, default=32, help="new tokens per row in the batch-cost curve")
    parser.add_argument("--batch-repeats", type=int, default=5, help="timed repeats per batch size (best kept)")
    parser.add_argument("--out", default="docs/benchmarks/foundation-cpu", help="output path without extension")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the existing JSON")
    args = parser.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".png"))
        return

    cfg = load_config(args.config, [*args.overrides, "mode=lr"])
    reasoner = LookaheadReasoner.from_config(cfg)
    reasoner.generate("What is 2 + 3?", mode="ar")  # warm-up: first-call overheads out of the timings
    rows = compare(reasoner, args.limit, args.data_dir)
    curve = batch_cost_curve(reasoner, load_example("gsm8k", 0, args.data_dir).question, args.batch_tokens, args.batch_repeats)
    summary = summarize(rows, curve)
    report = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {platform.system()}, "
        f"torch threads {__import__('torch').get_num_threads()}".strip(),
        "target": reasoner.target.name,
        "draft": reasoner.draft.name,
        "config": dataclasses.asdict(cfg),
        "summary": summary,
        "batch_cost_curve": curve,
        # the model's own decode step by batch size (index = batch; measured once, see engines/hf/batch_costs.py)
        "decode_step_s_by_batch": [
            None if c == float("inf") else round(c, 5) for c in reasoner.target.batch_costs or []
        ],
        "questions": rows,
    }
    reasoner.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(json.dumps(summary))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["questions"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    xs = range(len(rows))
    left.bar([x - 0.2 for x in xs], [r["wall_time_s"]["ar"] for r in rows], 0.4, label="ar (target alone)")
    lr_draft = [r["lr_stats"]["draft_s"] for r in rows]
    lr_target = [r["lr_stats"]["target_s"] for r in rows]
    lr_rest = [r["wall_time_s"]["lr"] - d - t for r, d, t in zip(rows, lr_draft, lr_target, strict=True)]
    right_x = [x + 0.2 for x in xs]
    left.bar(right_x, lr_target, 0.4, label="lr: batched target calls", color="tab:orange")
    left.bar(right_x, lr_draft, 0.4, bottom=lr_target, label="lr: draft steps", color="navajowhite")
    left.bar(right_x, lr_rest, 0.4, bottom=[a + b for a, b in zip(lr_target, lr_draft, strict=True)], color="grey")
    left.set_xlabel("GSM8K test question")
    left.set_ylabel("wall time (s)")
    left.set_title(f"ar vs lr: {report['summary']['lr_speedup_vs_ar']:.2f}x (draft: {report['draft']})", fontsize=9)
    left.legend()
    curve = report["batch_cost_curve"]
    right.plot([c["batch"] for c in curve], [c["relative_to_batch1"] for c in curve], "o-")
    right.plot([1, 4], [1, 4], "--", color="grey", label="batch rows run one by one")
    right.set_xlabel("rows in one target call (shared prefix)")
    right.set_ylabel("time relative to batch 1")
    right.set_title("batched target step cost", fontsize=9)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
