"""Benchmark tasks read from local JSONL copies (default: ``../shared/data``).

Example:
    >>> load_example("gsm8k", 0).question[:20]   # doctest: +SKIP
    'Janet’s ducks lay 16 '
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lookahead.errors import DataError


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's rows live and which fields hold the question and the reference answer."""

    file: str  # path relative to the data directory
    question_field: str  # field with the problem text
    answer_field: str  # field with the reference answer (GSM8K: worked solution ending "#### N")


TASKS = {
    "gsm8k": TaskSpec("gsm8k/test.jsonl", "question", "answer"),
    "aime24": TaskSpec("aime24/test.jsonl", "problem", "answer"),
    "math500": TaskSpec("math500/test.jsonl", "problem", "answer"),
}


@dataclass(frozen=True)
class Example:
    task: str  # task name
    index: int  # 0-based row in the file
    question: str  # problem text
    reference: str  # reference final answer


def default_data_dir() -> Path:
    """``$LOOKAHEAD_DATA_DIR``, else the first ``shared/data`` found beside the cwd or the repo."""
    env = os.environ.get("LOOKAHEAD_DATA_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for candidate in (Path.cwd() / "../shared/data", repo / "../shared/data", Path.cwd() / "shared/data"):
        if candidate.is_dir():
            return candidate.resolve()
    return (Path.cwd() / "../shared/data").resolve()


def parse_example_spec(spec: str) -> tuple[str, int]:
    """``"gsm8k:3"`` -> ``("gsm8k", 3)``."""
    task, sep, index = spec.partition(":")
    if not sep or not index.strip().lstrip("-").isdigit():
        raise DataError(f"--example must look like TASK:N (e.g. gsm8k:0), got {spec!r}")
    if task not in TASKS:
        raise DataError(f"unknown task {task!r} in --example; choose one of {', '.join(TASKS)}")
    return task, int(index)


def load_example(task: str, index: int, data_dir: str | Path | None = None) -> Example:
    """Read row ``index`` (0-based) of ``task`` from the data directory."""
    spec = TASKS[task]
    path = Path(data_dir) if data_dir is not None else default_data_dir()
    file = path / spec.file
    if not file.is_file():
        raise DataError(f"{file} does not exist; point --data-dir (or LOOKAHEAD_DATA_DIR) at the data folder")
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not 0 <= index < len(lines):
        raise DataError(f"{task} has rows 0..{len(lines) - 1} in {file}; got {index}")
    try:
        row = json.loads(lines[index])
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}:{index + 1}: not valid JSON ({exc})") from None
    for name in (spec.question_field, spec.answer_field):
        if name not in row:
            raise DataError(f"{file}:{index + 1}: the row has no field {name!r}")
    reference = str(row[spec.answer_field])
    if task == "gsm8k":
        reference = reference.rsplit("####", 1)[-1].strip().replace(",", "")
    return Example(task, index, str(row[spec.question_field]), reference)
