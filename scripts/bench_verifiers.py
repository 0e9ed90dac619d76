"""Compare the verifiers in one table: calibration (accept rate, precision/recall, speed) + end effect.

Two measurements feed it, both made by the package's own commands:

1. ``lookahead calibrate`` runs ``lr`` on GSM8K *train* questions, keeps every (draft step, target
   step) pair, labels each pair with a model-free oracle (numbers and normalised text agree) and
   rates each verifier against those labels: ``calibration.json``. Any number of calibrations can
   be given (e.g. one with the shipped draft, one with a stronger stand-in draft that produces
   many equivalent pairs); each becomes its own section.
2. ``lookahead eval`` on GSM8K *test* questions with one ``lr[verifier=NAME]`` run per verifier next
   to ``ar``: its ``summary.json`` gives, per verifier, the answer agreement with ``ar``, the accuracy,
   the step acceptance and the speedup.

This script joins them into ``OUT.json`` (with both commands and its own) and ``OUT.png``.

Example:
    .venv/bin/python scripts/bench_verifiers.py \\
        --calibration shipped-draft=runs/calibrate/calibration.json \\
        --eval docs/benchmarks/gsm8k-cpu-layers/summary.json --out docs/benchmarks/verifiers
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

CALIBRATION_KEYS = (
    "pairs", "accepted", "acceptance_rate", "precision", "recall", "false_accept_rate",
    "accuracy", "pairs_per_s", "failures", "auc", "decided_by", "error",
)  # fmt: skip
EVAL_KEYS = ("agreement_with_ar", "agreement_pairs", "accuracy", "step_acceptance", "speedup", "finished_problems")
RUN_VERIFIER = re.compile(r"verifier=([A-Za-z_]+)")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        _fail(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        _fail(f"{what} {path} is not valid JSON ({exc})")
    raise AssertionError  # unreachable


def calibration_section(path: Path) -> dict[str, Any]:
    """The per-verifier figures of one ``calibration.json``."""
    data = _read_json(path, "calibration")
    if "verifiers" not in data:
        _fail(f"{path} has no 'verifiers' section: is it a `lookahead calibrate` report?")
    return {
        "command": data.get("command"),
        "questions": data.get("questions"),
        "pairs": data.get("pairs"),
        "aligned": data.get("aligned"),
        "oracle": data.get("oracle"),
        "draft": (data.get("config") or {}).get("draft", {}).get("model"),
        "verifiers": {name: {k: r.get(k) for k in CALIBRATION_KEYS} for name, r in data["verifiers"].items()},
        "roc": {name: r.get("roc", []) for name, r in data["verifiers"].items()},
    }


def eval_section(path: Path) -> dict[str, Any]:
    """Per verifier, the end effect of running ``lr`` with it (from an eval ``summary.json``).

    A run counts for verifier NAME when its label has ``verifier=NAME``; the plain ``lr`` run counts
    for the config's own verifier.
    """
    data = _read_json(path, "eval summary")
    default = (data.get("config") or {}).get("verifier", {}).get("name", "exact")
    out: dict[str, Any] = {}
    for run in data.get("runs", []):
        if run.get("mode") != "lr":
            continue
        overrides = run.get("overrides") or {}
        if set(overrides) - {"verifier"}:
            continue  # another change besides the verifier: not a verifier comparison
        match = RUN_VERIFIER.search(run["label"])
        name = match.group(1) if match else default
        out[name] = {"run": run["label"], **{k: run.get(k) for k in EVAL_KEYS}}
    return {"command": data.get("command"), "problems": data.get("problems"), "verifiers": out}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--calibration", action="append", default=[], metavar="NAME=PATH",
        help="a calibration.json, labelled (repeatable), e.g. shipped-draft=runs/calibrate/calibration.json",
    )  # fmt: skip
    parser.add_argument("--eval", dest="eval_summary", type=Path, help="summary.json of an eval with lr[verifier=...] runs")
    parser.add_argument("--out", default="docs/benchmarks/verifiers", help="output path without extension")
    args = parser.parse_args(argv)
    if not args.calibration and args.eval_summary is None:
        _fail("give at least one --calibration NAME=PATH or an --eval summary.json")

    report: dict[str, Any] = {
        "command": " ".join(shlex.quote(a) for a in ["python", "scripts/bench_verifiers.py", *(argv or sys.argv[1:])]),
        "calibration": {},
    }
    for item in args.calibration:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            _fail(f"--calibration {item!r} must look like NAME=PATH")
        report["calibration"][name] = calibration_section(Path(path))
    if args.eval_summary is not None:
        report["answer_agreement"] = eval_section(args.eval_summary)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    plot(report, out.with_suffix(".png"))
    print(json.dumps({"out": str(out.with_suffix(".json")), "calibrations": list(report["calibration"]),
                      "agreement": sorted(report.get("answer_agreement", {}).get("verifiers", {}))}))  # fmt: skip
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    """One ROC panel per calibration, plus the answer agreement per verifier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = list(report["calibration"].items())
    agreement = report.get("answer_agreement", {}).get("verifiers", {})
    panels = len(sections) + (1 if agreement else 0)
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5 * max(panels, 1), 4.2), squeeze=False)
    for ax, (label, section) in zip(axes[0], sections, strict=False):
        for name, roc in section["roc"].items():
            figures = section["verifiers"][name]
            if roc:
                ax.plot([p["fpr"] for p in roc], [p["tpr"] for p in roc], ".-", label=f"{name} (AUC {figures['auc']:.2f})")
            if figures.get("recall") is not None and figures.get("false_accept_rate") is not None:
                ax.plot([figures["false_accept_rate"]], [figures["recall"]], "k+", markersize=9)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false accept rate (unaligned pairs accepted)")
        ax.set_ylabel("recall (aligned pairs accepted)")
        ax.set_title(f"{label}: {section['pairs']} pairs, {section['aligned']} aligned\n(+ = default threshold)", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if agreement:
        ax = axes[0][-1]
        names = sorted(agreement)
        values = [agreement[n]["agreement_with_ar"] or 0.0 for n in names]
        ax.bar(names, values)
        for i, name in enumerate(names):
            acc = agreement[name].get("step_acceptance")
            ax.text(i, values[i] + 0.01, f"steps acc. {acc:.2f}" if acc is not None else "", ha="center", fontsize=7)
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("answer agreement with ar")
        ax.set_title(f"lr with each verifier, {report['answer_agreement']['problems']} GSM8K test problems", fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
