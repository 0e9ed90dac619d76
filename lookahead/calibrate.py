"""How well does each verifier agree with an oracle on real step pairs? (``lookahead calibrate``)

A verifier trades speed for accuracy: accepting more draft steps commits more of them, accepting
a wrong one changes the answer. This command measures that trade on the pairs the loop really
sees, in three phases:

1. **collect** -- run ``lr`` on GSM8K *train* questions (never test) with the config's models and
   record every traced step that has both a draft step and a target step: the pair, and its
   context (the user message and the completion text before it, as the loop passes it).
   ``<out>/pairs.jsonl`` holds one line per question ``{"line", "question", "pairs": [...]}``,
   appended and flushed as each question ends: rerun the command to resume.
   Only pairs up to each round's first rejection are traced, so deeper depths are rarer.
2. **label** -- an oracle says which pairs are aligned (the draft step may replace the target
   step). ``numeric+normalized`` (default, model-free; see `numeric_oracle`) or ``llm_judge`` (the
   config's target as judge, or ``--oracle-model PATH``: use the strongest model you have).
3. **report** -- per verifier: acceptance rate, precision and recall of "accepted" against the
   oracle's "aligned", pairs per second, failures, and a threshold sweep over the verdict scores
   (TPR vs FPR, ROC-style, with its AUC): ``<out>/calibration.json`` and ``<out>/calibration.png``.

Verifier options come from the config: ``--set verifier=embedding --set
'verifier.options={threshold: 0.9}'`` applies those options to the embedding verifier only.

Example:
    lookahead calibrate --limit 20 --verifiers exact,numeric,embedding --out runs/calibrate
    lookahead calibrate --config tiny --limit 3 --json
"""

from __future__ import annotations

import itertools
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lookahead.errors import ConfigError, DataError, LookaheadError

PAIRS_FILE = "pairs.jsonl"
REPORT_FILE = "calibration.json"
PLOT_FILE = "calibration.png"
DEFAULT_VERIFIERS = "exact,numeric,embedding,llm_judge,score,cascade"
ORACLES = ("numeric+normalized", "llm_judge")
ROC_POINTS = 101  # most points of a stored threshold sweep

_FINAL_ANSWER = re.compile(r"\\boxed\{|[Ff]inal [Aa]nswer")


@dataclass
class Pair:
    """One (draft step, target step) pair from a traced ``lr`` run."""

    line: int  # line of the question in the dataset file (1-based)
    step: int  # index of the traced step in its completion (0-based)
    depth: int  # lookahead depth of the draft step (1-based)
    context: str  # the user message + the completion text before both steps (as the loop gives it)
    draft: str  # the draft step
    target: str  # the target step written from the same prefix
    accepted_in_run: bool  # the run's own verifier accepted it


# --------------------------------------------------------------------------------------------
# 1. collect


def pairs_of(result: Any, line: int, user_message: str = "") -> list[Pair]:
    """The (draft, target) pairs of one `Result` trace, each with the text before it.

    The context is built as the loop builds it for the verifier: the user message, a blank line,
    then the committed steps.
    """
    out, context = [], f"{user_message}\n\n" if user_message else ""
    for record in result.steps:
        if record.draft_text is not None and record.target_text is not None:
            accepted = bool(record.verdict and record.verdict.accepted)
            out.append(Pair(line, record.index, record.depth, context, record.draft_text, record.target_text, accepted))
        context += record.text
    return out


def read_pairs(path: Path) -> tuple[set[int], list[Pair]]:
    """(question lines done, their pairs) from ``pairs.jsonl``; a torn last line is ignored."""
    done: set[int] = set()
    pairs: list[Pair] = []
    if not path.is_file():
        return done, pairs
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            items = [Pair(**p) for p in row["pairs"]]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            if number == len(lines):
                break  # killed mid-write: that question is redone
            raise DataError(f"{path}:{number}: not a pairs record ({exc}); delete the line or the file") from None
        done.add(int(row["line"]))
        pairs.extend(items)
    return done, pairs


def collect_pairs(
    reasoner: Any, questions: Sequence[tuple[int, str]], path: Path, progress: Callable[[int], None] = lambda n: None
) -> None:
    """Run ``lr`` on each question not yet in ``path`` and append its pairs (one line a question)."""
    done, _ = read_pairs(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for line, question in questions:
            if line in done:
                continue
            result = reasoner.generate(question, mode="lr")
            user_message = reasoner.config.prompt_template.format(question=question.strip())
            pairs = pairs_of(result, line, user_message)
            record = {"line": line, "question": question, "pairs": [asdict(p) for p in pairs]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            progress(1)


# --------------------------------------------------------------------------------------------
# 2. label


def numeric_oracle(draft: str, target: str) -> bool:
    """The model-free oracle: is the draft step aligned with the target step?

    Aligned when (a) their normalized texts are equal (`normalize_step`: case, whitespace,
    number formatting), or (b) both state at least one number, they state the same set of
    numbers, they end on the same number (the step's result) and both or neither states the
    final answer. Steps without numbers that differ in wording are *not* aligned: the oracle is
    strict, so it under-counts paraphrases (it favours the numeric verifier by construction --
    use ``--oracle llm_judge`` to rate that one).
    """
    from lookahead.verifiers.exact import normalize_step
    from lookahead.verifiers.numeric import step_numbers

    a, b = normalize_step(draft), normalize_step(target)
    if a == b:
        return True
    numbers_a, numbers_b = step_numbers(draft), step_numbers(target)
    if not numbers_a or numbers_a != numbers_b:
        return False
    last_a, last_b = step_numbers(_last_number(draft)), step_numbers(_last_number(target))
    return last_a == last_b and bool(_FINAL_ANSWER.search(draft)) == bool(_FINAL_ANSWER.search(target))


def _last_number(text: str) -> str:
    found = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return found[-1] if found else ""


def oracle_labels(pairs: Sequence[Pair], oracle: str, judge: Any = None, batch_size: int = 64) -> list[bool]:
    """Aligned (True) or not per pair, by ``oracle`` (``judge``: the llm_judge verifier to use)."""
    if oracle == "numeric+normalized":
        return [numeric_oracle(p.draft, p.target) for p in pairs]
    if oracle == "llm_judge":
        labels: list[bool] = []
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            verdicts = judge.verify([p.context for p in chunk], [p.draft for p in chunk], [p.target for p in chunk])
            failed = [v.reason for v in verdicts if v.reason and v.reason.startswith(("failed:", "timeout"))]
            if failed:
                raise ConfigError(f"the llm_judge oracle failed ({failed[0]}); fix the judge or use --oracle numeric+normalized")
            labels.extend(v.accepted for v in verdicts)
        return labels
    raise ConfigError(f"--oracle {oracle!r} is unknown; choose one of {', '.join(ORACLES)}")


# --------------------------------------------------------------------------------------------
# 3. report


@dataclass
class VerifierReport:
    """How one verifier's verdicts compare with the oracle's labels."""

    name: str  # verifier registry name
    options: dict[str, Any]  # the options it ran with
    pairs: int = 0  # pairs judged
    accepted: int = 0  # pairs it accepted
    acceptance_rate: float = 0.0  # accepted / pairs
    precision: float | None = None  # aligned among accepted (None: nothing accepted)
    recall: float | None = None  # accepted among aligned = TPR (None: nothing aligned)
    false_accept_rate: float | None = None  # accepted among unaligned = FPR (None: nothing unaligned)
    accuracy: float = 0.0  # verdicts agreeing with the oracle / pairs
    seconds: float = 0.0  # time inside verify calls (s)
    pairs_per_s: float = 0.0  # pairs / seconds
    failures: int = 0  # verdicts rejected because the verifier failed or timed out
    auc: float | None = None  # area under the TPR-vs-FPR curve of the scores (None: one class only)
    roc: list[dict[str, float]] = field(default_factory=list)  # [{threshold, tpr, fpr}], thresholds descending
    decided_by: dict[str, int] = field(default_factory=dict)  # cascade: stage -> pairs it decided
    error: str | None = None  # why the verifier could not run at all (then the numbers are empty)


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[dict[str, float]], float | None]:
    """Threshold sweep: for each distinct score t (descending), accept score >= t -> (TPR, FPR); and the AUC."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return [], None
    order = sorted(zip(scores, labels, strict=True), key=lambda x: -x[0])
    points = [{"threshold": math.inf, "tpr": 0.0, "fpr": 0.0}]
    tp = fp = 0
    for k, (score, label) in enumerate(order):
        tp += label
        fp += not label
        if k + 1 == len(order) or order[k + 1][0] != score:
            points.append({"threshold": score, "tpr": tp / positives, "fpr": fp / negatives})
    auc = sum((b["fpr"] - a["fpr"]) * (a["tpr"] + b["tpr"]) / 2 for a, b in itertools.pairwise(points))
    if len(points) > ROC_POINTS:  # keep the ends and an even spread
        step = (len(points) - 1) / (ROC_POINTS - 1)
        points = [points[round(i * step)] for i in range(ROC_POINTS)]
    points[0]["threshold"] = None  # JSON has no infinity: "accept nothing"
    return points, auc


def evaluate(verifier: Any, name: str, options: dict[str, Any], pairs: Sequence[Pair], labels: Sequence[bool],
             batch_size: int = 64) -> VerifierReport:
    """Run ``verifier`` over the pairs in batches and compare with ``labels``."""
    from lookahead.verifiers.base import is_failure

    report = VerifierReport(name, options)
    if hasattr(verifier, "prepare"):
        verifier.prepare()  # load a judge model before the clock starts
    verdicts = []
    start = time.perf_counter()
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first : first + batch_size]
        verdicts.extend(verifier.verify([p.context for p in chunk], [p.draft for p in chunk], [p.target for p in chunk]))
    report.seconds = time.perf_counter() - start
    n = len(pairs)
    accepted = [v.accepted for v in verdicts]
    tp = sum(a and y for a, y in zip(accepted, labels, strict=True))
    report.pairs, report.accepted = n, sum(accepted)
    report.acceptance_rate = report.accepted / n if n else 0.0
    report.precision = tp / report.accepted if report.accepted else None
    report.recall = tp / sum(labels) if sum(labels) else None
    negatives = n - sum(labels)
    report.false_accept_rate = (report.accepted - tp) / negatives if negatives else None
    report.accuracy = sum(a == y for a, y in zip(accepted, labels, strict=True)) / n if n else 0.0
    report.pairs_per_s = n / report.seconds if report.seconds > 0 else 0.0
    report.failures = sum(is_failure(v) for v in verdicts)
    report.roc, report.auc = roc_curve([v.score for v in verdicts], labels)
    if hasattr(verifier, "decided_by"):
        report.decided_by = dict(verifier.decided_by)
    return report


def plot_roc(reports: Sequence[VerifierReport], path: Path) -> bool:
    """TPR vs FPR per verifier (its sweep as a line, its configured threshold as a dot). False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, 1], [0, 1], color="0.8", linestyle="--", linewidth=1)
    for r in reports:
        if r.error or not r.roc:
            continue
        line = ax.plot([p["fpr"] for p in r.roc], [p["tpr"] for p in r.roc], marker=".", label=f"{r.name} (AUC {r.auc:.2f})")
        tpr = r.recall if r.recall is not None else 0.0
        fpr = r.false_accept_rate if r.false_accept_rate is not None else 0.0
        ax.plot([fpr], [tpr], marker="o", markersize=8, color=line[0].get_color())
    ax.set_xlabel("false positive rate (unaligned pairs accepted)")
    ax.set_ylabel("true positive rate (aligned pairs accepted)")
    ax.set_title("verifier threshold sweeps vs the oracle (dot: configured threshold)", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------
# One `lookahead calibrate`: its questions, the three phases, the report


def verifier_names(text: str) -> list[str]:
    """``--verifiers exact,numeric`` -> the names; unknown or none is a `ConfigError` listing the known ones."""
    from lookahead.verifiers import VERIFIER_NAMES

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VERIFIER_NAMES]
    if not names or unknown:
        raise ConfigError(f"--verifiers: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(VERIFIER_NAMES)}")
    return names


def check_oracle(oracle: str) -> None:
    """Refuse an oracle that is not one of `ORACLES` (`ConfigError`)."""
    if oracle not in ORACLES:
        raise ConfigError(f"--oracle {oracle!r} is unknown; choose one of {', '.join(ORACLES)}")


@dataclass
class CalibrationRun:
    """One ``lookahead calibrate``: the config whose models make the pairs, the questions, the folder."""

    config: Any  # the LookaheadConfig (mode lr) whose draft, target and verifier options are used
    out: Path  # the run folder: pairs.jsonl, calibration.json, calibration.png
    source: Path  # the questions file
    questions: list[tuple[int, str]]  # (line, question) to run lr on

    @property
    def pairs_path(self) -> Path:
        return self.out / PAIRS_FILE

    def todo(self) -> int:
        """Questions whose pairs are not collected yet (count)."""
        done, _ = read_pairs(self.pairs_path)
        return sum(1 for line, _ in self.questions if line not in done)

    def reasoner(self) -> Any:
        """The `LookaheadReasoner` that makes the pairs (a context manager: closed on exit)."""
        from lookahead.loop import LookaheadReasoner

        return LookaheadReasoner(self.config)

    def pairs(self) -> list[Pair]:
        """The collected pairs of this run's questions; none is a `ConfigError`."""
        wanted = {line for line, _ in self.questions}
        pairs = [p for p in read_pairs(self.pairs_path)[1] if p.line in wanted]
        if not pairs:
            raise ConfigError(f"the lr runs produced no (draft, target) pairs in {self.pairs_path}; check the draft model")
        return pairs

    def rate(self, reasoner: Any, pairs: Sequence[Pair], names: Sequence[str], oracle: str,
             oracle_model: str | None, batch_size: int) -> tuple[list[bool], list[VerifierReport]]:
        """Phases 2 and 3: the oracle's labels, then each verifier against them (a verifier that
        cannot run, e.g. a judge on an engine without log-probabilities, gets its error). The
        verifiers (and an llm_judge oracle) strip and compare on the config's step delimiter."""
        from lookahead.config import VerifierConfig
        from lookahead.verifiers import create_verifier
        from lookahead.verifiers.llm_judge import LLMJudgeVerifier

        engines = {"target": lambda: reasoner.target, "draft": lambda: reasoner.draft}
        judge = None
        if oracle == "llm_judge":
            engine: Any = {"backend": "hf", "model": oracle_model} if oracle_model else "target"
            judge = LLMJudgeVerifier(engines=engines, engine=engine, delimiter=self.config.step_delimiter)
        labels = oracle_labels(pairs, oracle, judge, batch_size)
        reports = []
        for name in names:
            options = dict(self.config.verifier.options) if self.config.verifier.name == name else {}
            try:
                verifier = create_verifier(VerifierConfig(name=name, options=options), engines,
                                           step_delimiter=self.config.step_delimiter)
                reports.append(evaluate(verifier, name, options, pairs, labels, batch_size))
            except LookaheadError as exc:
                reports.append(VerifierReport(name, options, error=str(exc)))
        return labels, reports

    def write_report(self, pairs: Sequence[Pair], labels: Sequence[bool], reports: Sequence[VerifierReport],
                     oracle: str, oracle_model: str | None) -> dict[str, Any]:
        """``calibration.png`` (when matplotlib is there) and ``calibration.json``; returns the report."""
        from lookahead.config import redact_text, redacted

        plotted = plot_roc(reports, self.out / PLOT_FILE)
        argv = " ".join(["lookahead", "calibrate", *sys.argv[2:]]) if len(sys.argv) > 1 else "lookahead calibrate"
        payload = {
            "command": redact_text(argv),
            "data": str(self.source),
            "questions": len(self.questions),
            "pairs": len(pairs),
            "aligned": sum(labels),
            "oracle": oracle if not oracle_model else f"{oracle}:{oracle_model}",
            "pairs_file": str(self.pairs_path),
            "plot": str(self.out / PLOT_FILE) if plotted else None,
            "verifiers": {r.name: redacted(asdict(r)) for r in reports},  # options: secrets as ***
            "config": self.config.public_dict(),  # secrets as ***
        }
        (self.out / REPORT_FILE).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return payload


def prepare_run(config: Any, out: Path, data: Path | None, question_field: str | None, offset: int,
                limit: int | None, allow_test_split: bool = False) -> CalibrationRun:
    """Check everything a ``lookahead calibrate`` needs before any model loads: training data
    (not a test split), rows after ``offset``, a writable ``out``."""
    from lookahead.distill import select_questions, training_questions
    from lookahead.eval.harness import output_folder

    path = training_questions(data, allow_test_split, "calibrate")
    questions = select_questions(path, question_field, offset, limit)
    output_folder(out, "pairs.jsonl, calibration.json and calibration.png")
    return CalibrationRun(config, out, path, questions)
