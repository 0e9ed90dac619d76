"""Would a draft write the target's steps? Teacher-forced step match on an eval's `ar` texts.

Reads the ``ar`` records of a `lookahead eval` / `lookahead bench` folder (the target's own
greedy solutions), feeds each draft the target's prefix and counts the target steps the draft's
greedy picks reproduce token for token: what greedy drafting with the exact verifier accepts at
depth 1, measured without running the loop (one forward pass per solution). Each draft is scored
plain and copying from its context (``draft.copy=true``), with the next-token agreement. (One
forward pass over the whole text may break a near-tie differently from step-by-step decoding, so
even the target scores a little under 1 on its own text.)
Writes ``<folder>/step_match.json``.

Example:
    .venv/bin/python scripts/step_match.py docs/benchmarks/bench-copy
    .venv/bin/python scripts/step_match.py docs/benchmarks/bench-copy --draft smollm2-135m-gsm8k-draft --draft runs/dB/model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from lookahead import distill as d
from lookahead.config import load_config
from lookahead.engines.hf import HFEngine
from lookahead.errors import LookaheadError
from lookahead.prompts import build_messages


def ar_solutions(folder: Path, cfg, target: HFEngine) -> list[d.Solution]:
    """The ``ar`` run's completions of ``folder/records.jsonl`` with the prompts the target saw."""
    path = folder / "records.jsonl"
    if not path.is_file():
        raise LookaheadError(f"{path} does not exist; give a lookahead eval or bench output folder")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted run
        if record.get("run") != "ar" or record.get("status") != "ok":
            continue
        if not isinstance(record.get("question"), str) or not isinstance(record.get("completion"), str):
            raise LookaheadError(f"{path}, line {number}: an ar record without its question or completion text")
        prompt = target.format_chat(build_messages(record["question"], cfg.prompt_template, cfg.system_prompt))
        out.append(d.Solution(number, record["question"], prompt, record["completion"], record.get("finish_reason", "")))
    if not out:
        raise LookaheadError(f"{path} has no finished `ar` records to compare against")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a lookahead eval or bench output folder (records.jsonl with an ar run)")
    parser.add_argument("--draft", action="append", help="draft model (repeatable; default: the config's draft)")
    parser.add_argument("--config", default="default", help="preset or YAML file the eval ran with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override, as in the eval")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        target = HFEngine.from_config(cfg.target)
        solutions = ar_solutions(args.folder, cfg, target)
        stepped = d._step_spans(target.tokenizer, solutions, cfg.step_delimiter)
        examples = [(ids, prompt_len) for ids, prompt_len, _ in stepped]
        pad = target.tokenizer.pad_token_id or 0
        report: dict[str, Any] = {
            "command": shlex.join(["python", "scripts/step_match.py", *(argv if argv is not None else sys.argv[1:])]),
            "solutions": len(solutions),
            "steps": sum(len(spans) for _, _, spans in stepped),
            "drafts": {},
        }
        for name in args.draft or [cfg.draft.model]:
            engine = HFEngine.from_config(dataclasses.replace(cfg.draft, model=name))
            _, agreement, plain, copying = d._evaluate(engine.model, examples, pad, stepped)
            report["drafts"][name] = {
                "next_token_agreement": round(agreement, 4),
                "step_match": round(plain, 4),
                "step_match_copy": round(copying, 4),
            }
            print(f"{name}: next-token agreement {agreement:.3f} · steps written token for token "
                  f"{plain:.3f} · copying {copying:.3f} (of {report['steps']} steps)")
    except LookaheadError as exc:
        sys.exit(f"error: {exc}")
    (args.folder / "step_match.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
