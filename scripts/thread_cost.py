"""Why every in-process model runs on one thread: time the target's decode step on the thread that
loaded it and on another thread (`lookahead/engines/torch_thread.py`).

The model is loaded on the main thread and called directly (not through `HFEngine`, which would
move every call onto the torch thread). Writes JSON with the command on top.

    python scripts/thread_cost.py --out docs/benchmarks/torch-thread.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path


def step_ms(model, torch, steps: int, context: int) -> float:
    """Median milliseconds of one one-row decode step after a ``context``-token prefill."""
    ids = torch.randint(0, 1000, (1, context))
    times = []
    with torch.inference_mode():
        past = model(ids, use_cache=True).past_key_values
        token = ids[:, -1:]
        for _ in range(steps):
            start = time.perf_counter()
            past = model(token, past_key_values=past, use_cache=True).past_key_values
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="A model name the config resolves.")
    parser.add_argument("--steps", type=int, default=40, help="Decode steps timed per measurement.")
    parser.add_argument("--context", type=int, default=60, help="Prompt tokens before the timed steps.")
    parser.add_argument("--out", type=Path, required=True, help="The JSON to write.")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.context < 1:
        parser.error("--steps and --context must be >= 1")

    import torch
    from transformers import AutoModelForCausalLM

    from lookahead.config import EngineConfig
    from lookahead.engines.hf.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(EngineConfig(model=args.model)).source).eval()
    results: dict[str, float] = {}
    results["loading_thread_ms"] = step_ms(model, torch, args.steps, args.context)

    def other() -> None:
        results["other_thread_ms"] = step_ms(model, torch, args.steps, args.context)

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    results["loading_thread_again_ms"] = step_ms(model, torch, args.steps, args.context)
    report = {
        "command": "python scripts/thread_cost.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "model": args.model,
        "context_tokens": args.context,
        "steps": args.steps,
        **{k: round(v, 2) for k, v in results.items()},
        "other_over_loading": round(results["other_thread_ms"] / results["loading_thread_ms"], 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
