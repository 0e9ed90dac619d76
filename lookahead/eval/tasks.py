"""Benchmark tasks: GSM8K, AIME 2024, MATH-500 from local JSONL copies, any JSONL file, or a hub set.

A task spec names where the problems come from:

- ``gsm8k``, ``aime24``, ``math500``: ``<data dir>/<task>/<split>.jsonl`` (data dir: ``--data-dir``,
  ``$LOOKAHEAD_DATA_DIR`` or the first ``shared/data`` beside the working directory or the repo);
- ``jsonl:PATH``: any JSONL file (``.jsonl.gz`` too), with ``--question-field`` / ``--answer-field``
  naming its fields, so a new set needs no code;
- ``hf:NAME`` or ``hf:NAME:CONFIG``: a hub dataset through ``datasets.load_dataset`` (needs the
  network or the local hub cache).

Local files are read line by line here rather than through the ``datasets`` JSON loader: that
loader fails on blank lines and on a field whose type changes between rows, with a traceback that
names no line, while a bad row must be reported as ``file:line``.

Reference answers go through `lookahead.eval.answers.parse_reference` (GSM8K's ``#### N``, a
``\\boxed{}`` solution, or the field as is). A row whose reference cannot be parsed stays in the
set with ``reference=None``: it is generated and timed but not graded, and counted.

Example:
    >>> source = resolve_task("jsonl:/data/aime25.jsonl", question_field="problem")   # doctest: +SKIP
    >>> problems = load_problems(source, offset=0, limit=5)                           # doctest: +SKIP
    >>> load_example("gsm8k", 0).question[:20]                                         # doctest: +SKIP
    'Janet’s ducks lay 16 '
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookahead.errors import DataError
from lookahead.eval.answers import parse_reference


@dataclass(frozen=True)
class TaskSpec:
    """Where a built-in task's rows live and which fields hold the question and the reference answer."""

    file: str  # path of the test split relative to the data directory
    question_field: str  # field with the problem text
    answer_field: str  # field with the reference answer (GSM8K: worked solution ending "#### N")
    id_field: str | None = None  # field with the set's own problem id, if it has one
    prompt_template: str | None = None  # the task's user message ({question}); None = the config's
    hub: str | None = None  # hub dataset "NAME" or "NAME:CONFIG" holding the same set (online only)

    def path_for(self, data_dir: Path, split: str) -> Path:
        """The local file of ``split`` (``gsm8k/train.jsonl`` for split ``train``)."""
        folder = Path(self.file).parent
        return data_dir / folder / f"{split}.jsonl"


_MATH_TEMPLATE = (
    "{question}\n\nSolve the problem step by step. Separate the steps with a blank line. "
    "End with: The final answer is \\boxed{{ANSWER}}, with the answer in simplest form."
)

TASKS = {
    "gsm8k": TaskSpec("gsm8k/test.jsonl", "question", "answer", hub="openai/gsm8k:main"),
    "aime24": TaskSpec(
        "aime24/test.jsonl",
        "problem",
        "answer",
        id_field="id",
        prompt_template=(
            "{question}\n\nSolve the problem step by step. Separate the steps with a blank line. "
            "The answer is an integer from 0 to 999. End with: The final answer is \\boxed{{N}}."
        ),
    ),
    "math500": TaskSpec(
        "math500/test.jsonl",
        "problem",
        "answer",
        id_field="unique_id",
        prompt_template=_MATH_TEMPLATE,
        hub="HuggingFaceH4/MATH-500",
    ),
}


@dataclass(frozen=True)
class Example:
    task: str  # task name
    index: int  # 0-based row in the file
    question: str  # problem text
    reference: str  # reference final answer


@dataclass(frozen=True)
class TaskSource:
    """A resolved task spec: where to read, which fields, which prompt."""

    name: str  # the spec as given: "gsm8k", "jsonl:PATH" or "hf:NAME[:CONFIG]"
    question_field: str  # field with the problem text
    answer_field: str  # field with the reference answer
    path: Path | None = None  # local JSONL file (None for a hub set)
    hub: str | None = None  # hub dataset name (None for a local file)
    hub_config: str | None = None  # hub dataset configuration, e.g. "main" for openai/gsm8k
    split: str = "test"  # split name (local built-in tasks: the file name)
    id_field: str | None = None  # field with the set's own problem id
    prompt_template: str | None = None  # task-specific user message; None = the config's

    @property
    def location(self) -> str:
        """Where the rows come from, for messages and run.json."""
        if self.path is not None:
            return str(self.path)
        return f"hub {self.hub}" + (f" ({self.hub_config})" if self.hub_config else "") + f" split {self.split}"


@dataclass(frozen=True)
class Problem:
    """One benchmark problem as the harness sees it."""

    index: int  # 0-based position in the set (the key of its records)
    line: int | None  # 1-based line in the local file (None for hub sets)
    question: str  # problem text
    reference: str | None  # parsed reference final answer; None = could not be parsed
    raw_reference: str  # the answer field as stored (GSM8K: the worked solution)
    source_id: str | None = None  # the set's own id (aime24 "id", math500 "unique_id")


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


# -- whole sets for the harness -----------------------------------------------------------------
def resolve_task(
    task: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
) -> TaskSource:
    """Turn a task spec (see the module docstring) into a `TaskSource`; nothing is read yet."""
    kind, sep, rest = task.partition(":")
    if task in TASKS:
        spec = TASKS[task]
        directory = Path(data_dir) if data_dir is not None else default_data_dir()
        path = spec.path_for(directory, split)
        if not path.is_file():
            hint = f"; online, --task hf:{spec.hub} reads the hub copy" if spec.hub else ""
            raise DataError(
                f"{path} does not exist (task {task}, split {split}); point --data-dir (or "
                f"LOOKAHEAD_DATA_DIR) at the folder holding {Path(spec.file).parent}/{hint}"
            )
        return TaskSource(
            task,
            question_field or spec.question_field,
            answer_field or spec.answer_field,
            path=path,
            split=split,
            id_field=spec.id_field,
            prompt_template=spec.prompt_template,
        )
    if kind == "jsonl" and sep:
        path = Path(rest).expanduser()
        if not rest or not path.is_file():
            raise DataError(f"{path} does not exist; --task jsonl:PATH needs an existing JSONL file")
        return TaskSource(task, question_field or "problem", answer_field or "answer", path=path, split=split)
    if kind == "hf" and sep and rest:
        name, _, config = rest.partition(":")
        known = next((spec for spec in TASKS.values() if spec.hub and spec.hub.split(":")[0] == name), None)
        return TaskSource(
            task,
            question_field or (known.question_field if known else "problem"),
            answer_field or (known.answer_field if known else "answer"),
            hub=name,
            hub_config=config or None,
            split=split,
            id_field=known.id_field if known else None,
            prompt_template=known.prompt_template if known else None,
        )
    raise DataError(
        f"unknown task {task!r}; choose one of {', '.join(TASKS)}, jsonl:PATH (any JSONL file) "
        "or hf:NAME[:CONFIG] (a hub dataset)"
    )


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line, row) for every non-blank line; a bad line raises `DataError` naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or remove the line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
                rows.append((number, row))
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    return rows


def _read_hub(source: TaskSource) -> list[tuple[int | None, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise DataError("hub tasks need the datasets package: pip install datasets==5.2.0") from None
    try:
        data = datasets.load_dataset(source.hub, source.hub_config, split=source.split)
    except Exception as exc:  # network, unknown name, unknown split: all the user's to fix
        raise DataError(
            f"could not load {source.location} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "offline, download the set as JSONL and use --task jsonl:PATH"
        ) from None
    return [(None, dict(row)) for row in data]


def load_problems(source: TaskSource, offset: int = 0, limit: int | None = None) -> list[Problem]:
    """Problems ``offset .. offset+limit-1`` of the set (0-based row positions, blank lines skipped).

    Every selected row must hold both named fields (else `DataError` naming file and line); a
    reference that cannot be parsed gives ``Problem.reference = None``.
    """
    if offset < 0:
        raise DataError(f"--offset must be >= 0 (got {offset})")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1 (got {limit})")
    rows = _read_jsonl(source.path) if source.path is not None else _read_hub(source)
    if offset >= len(rows):
        raise DataError(f"{source.location} has {len(rows)} rows; --offset {offset} leaves none")
    end = len(rows) if limit is None else min(len(rows), offset + limit)
    problems = []
    for index in range(offset, end):
        line, row = rows[index]
        where = f"{source.path}:{line}" if line is not None else f"{source.location} row {index}"
        for name, option in ((source.question_field, "--question-field"), (source.answer_field, "--answer-field")):
            if name not in row:
                fields = ", ".join(sorted(row)) or "none"
                raise DataError(f"{where}: the row has no field {name!r} (fields: {fields}); set {option}")
        question = row[source.question_field]
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: field {source.question_field!r} must be a non-empty string")
        raw = row[source.answer_field]
        source_id = row.get(source.id_field) if source.id_field else None
        problems.append(
            Problem(
                index=index,
                line=line,
                question=question,
                reference=parse_reference(raw),
                raw_reference="" if raw is None else str(raw),
                source_id=None if source_id is None else str(source_id),
            )
        )
    return problems
