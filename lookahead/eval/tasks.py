"""Benchmark tasks: GSM8K, AIME 2024, MATH-500 shipped with the package, any JSONL file, or a hub set.

A task spec names where the problems come from:

- ``gsm8k``, ``aime24``, ``math500``: the file ``<task>/<split>.jsonl``, found by `split_file`:

  1. ``--data-dir DIR`` or ``$LOOKAHEAD_DATA_DIR``: ``DIR/<task>/<split>.jsonl`` and nothing else
     (a missing file is named, never replaced by another copy);
  2. the package's own copy, ``lookahead/data/`` (the three *test* splits, byte-identical to their
     sources; licences in ``lookahead/data/SOURCES.md`` and ``LICENSES/``), so ``solve --example``,
     ``eval`` and ``bench`` work from a fresh clone or an installed wheel;
  3. a ``shared/data`` folder beside the working directory or the repository (the team's layout;
     GSM8K *train*, which ``distill`` and ``calibrate`` read and the package does not ship, is
     found here);
  4. the task's hub copy (``TaskSpec.hub``, e.g. ``openai/gsm8k``) when ``datasets`` is installed
     and the network answers, saved once as JSONL under ``$LOOKAHEAD_CACHE`` or ``~/.cache/lookahead``;
  5. else one `DataError` line: what is missing and the ways to get it.

- ``jsonl:PATH``: any JSONL file (``.jsonl.gz`` too), with ``--question-field`` / ``--answer-field``
  naming its fields, so a new set needs no code;
- ``hf:NAME`` or ``hf:NAME:CONFIG``: a hub dataset through ``datasets.load_dataset`` (needs the
  network or the local hub cache).

Local files are read line by line here rather than through the ``datasets`` JSON loader: that
loader fails on blank lines and on a field whose type changes between rows, with a traceback that
names no line, while a bad row must be reported as ``file:line`` (invalid JSON, invalid UTF-8; a
UTF-8 byte-order mark is accepted).

Reference answers go through `lookahead.answers.parse_reference` (GSM8K's ``#### N``, a
``\\boxed{}`` solution, or the field as is). A row whose reference cannot be parsed stays in the
set with ``reference=None``: it is generated and timed but not graded, and counted.

Example:
    >>> source = resolve_task("jsonl:/data/aime25.jsonl", question_field="problem")   # doctest: +SKIP
    >>> problems = load_problems(source, offset=0, limit=5)                           # doctest: +SKIP
    >>> load_example("gsm8k", 0).question[:20]                                         # doctest: +SKIP
    'Janet’s ducks lay 16 '
    >>> split_file("gsm8k", "train")           # distill's questions: shared/data, else the hub  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookahead.answers import parse_reference
from lookahead.errors import DataError


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


DATA_DIR_ENV = "LOOKAHEAD_DATA_DIR"  # a data folder that overrides every other source


def packaged_data_dir() -> Path:
    """``lookahead/data``: the test splits shipped in the package (also in an installed wheel)."""
    return Path(__file__).resolve().parents[1] / "data"


def _shared_data_dirs() -> list[Path]:
    """The team's layout: ``shared/data`` beside the working directory or the repository, if any."""
    repo = Path(__file__).resolve().parents[2]
    candidates = (Path.cwd() / "../shared/data", repo / "../shared/data", Path.cwd() / "shared/data")
    found: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and candidate.resolve() not in found:
            found.append(candidate.resolve())
    return found


def _override_dir(data_dir: str | Path | None) -> tuple[Path, str] | None:
    """``(folder, how it was given)`` for ``--data-dir`` or ``$LOOKAHEAD_DATA_DIR``; None = neither."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser(), f"${DATA_DIR_ENV}"
    return None


def default_data_dir() -> Path:
    """A folder holding the built-in sets: ``$LOOKAHEAD_DATA_DIR``, else the first ``shared/data``
    beside the cwd or the repo, else the package's ``lookahead/data`` (test splits only).

    For one file use `split_file`, which also looks further (the package, the hub) and explains
    what is missing.
    """
    override = _override_dir(None)
    if override is not None:
        return override[0]
    shared = _shared_data_dirs()
    return shared[0] if shared else packaged_data_dir()


def _cache_root() -> Path:
    return Path(os.environ.get("LOOKAHEAD_CACHE") or "~/.cache/lookahead").expanduser()


def _hub_copy(spec: TaskSpec, split: str, target: Path) -> str | None:
    """Save ``split`` of the task's hub set as JSONL at ``target``; None on success, else why not."""
    try:
        import datasets
    except ImportError:
        return "the datasets package is not installed"
    name, _, config = (spec.hub or "").partition(":")
    try:
        data = datasets.load_dataset(name, config or None, split=split)
    except Exception as exc:  # noqa: BLE001 -- offline, unknown split, ...: the caller lists the other ways
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"hub {spec.hub} split {split}: {type(exc).__name__}: {first}"
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w", encoding="utf-8") as handle:
            for row in data:
                handle.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
        os.replace(partial, target)  # whole or absent: an interrupted download leaves no torn file
    except OSError as exc:
        partial.unlink(missing_ok=True)
        return f"read hub {spec.hub} but could not save it as {target} ({exc})"
    return None


def split_file(
    task: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    *,
    own_file: str = "--task jsonl:FILE",
    dir_option: str | None = "--data-dir",
) -> Path:
    """The local JSONL file of ``split`` of built-in ``task``, found as the module docstring says.

    For the message when it is missing: ``own_file`` is the caller's way to give a file of one's
    own (``--data FILE`` for distill and calibrate, ``--task jsonl:FILE`` for eval) and
    ``dir_option`` its data-folder option (None: the caller has only ``$LOOKAHEAD_DATA_DIR``).
    """
    spec = TASKS[task]
    relative = spec.path_for(Path(), split)  # e.g. gsm8k/train.jsonl
    override = _override_dir(data_dir)
    if override is not None:
        directory, how = override
        path = directory / relative
        if not path.is_file():
            hint = f"; online, --task hf:{spec.hub} reads the hub copy" if spec.hub else ""
            point = f"{dir_option} (or {DATA_DIR_ENV})" if dir_option else DATA_DIR_ENV
            raise DataError(
                f"{path} does not exist (task {task}, split {split}, from {how}); point {point} at the "
                f"folder holding {relative.parent}/, or give {own_file}{hint}"
            )
        return path
    for directory in (packaged_data_dir(), *_shared_data_dirs()):
        if (directory / relative).is_file():
            return directory / relative
    why = "no hub copy is known for it"
    if spec.hub:
        cached = _cache_root() / "data" / relative
        if cached.is_file():
            return cached
        reason = _hub_copy(spec, split, cached)
        if reason is None:
            return cached
        why = reason
    folder = f"{dir_option} DIR (or {DATA_DIR_ENV}=DIR)" if dir_option else f"{DATA_DIR_ENV}=DIR"
    ways = [f"{folder} with DIR/{relative.as_posix()}", f"{own_file} (a JSONL file of your own)"]
    if spec.hub:
        ways.append(f"pip install -e '.[hub]' and go online (reads {spec.hub.partition(':')[0]})")
    raise DataError(
        f"{relative.as_posix()} ({task} {split}) is not shipped with lookahead and was not found "
        f"(not in a shared/data folder beside {Path.cwd()} or the repository; {why}); get it with "
        + ", or ".join(ways)
    )


def parse_example_spec(spec: str) -> tuple[str, int]:
    """``"gsm8k:3"`` -> ``("gsm8k", 3)``."""
    task, sep, index = spec.partition(":")
    if not sep or not index.strip().lstrip("-").isdigit():
        raise DataError(f"--example must look like TASK:N (e.g. gsm8k:0), got {spec!r}")
    if task not in TASKS:
        raise DataError(f"unknown task {task!r} in --example; choose one of {', '.join(TASKS)}")
    return task, int(index)


def load_example(task: str, index: int, data_dir: str | Path | None = None) -> Example:
    """Read row ``index`` (0-based, blank lines skipped) of ``task``'s test split (see `split_file`)."""
    spec = TASKS[task]
    file = split_file(task, "test", data_dir, own_file="the question text itself")
    rows = _read_jsonl(file)
    if not 0 <= index < len(rows):
        raise DataError(f"{task} has rows 0..{len(rows) - 1} in {file}; got {index}")
    line, row = rows[index]
    for name in (spec.question_field, spec.answer_field):
        if name not in row:
            raise DataError(f"{file}:{line}: the row has no field {name!r}")
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
        path = split_file(task, split, data_dir)
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
        if rest and path.is_dir():
            raise DataError(f"{path} is a directory, not a JSONL file; --task jsonl:PATH needs the file inside it")
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
    """(1-based line, row) for every non-blank line; a bad line raises `DataError` naming it.

    Lines are decoded one by one so that invalid UTF-8 is reported as ``file:line``; a UTF-8
    byte-order mark at the start of the file (as some Windows editors write) is skipped.
    """
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a JSONL file; give the file inside it")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        f"{path}:{number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of "
                        f"the line: {exc.reason}); save the file as UTF-8"
                    ) from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); fix or remove the line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
                rows.append((number, row))
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    return rows


def _read_hub(source: TaskSource) -> list[tuple[int | None, dict[str, Any]]]:
    try:
        import datasets
    except ImportError:
        raise DataError("hub tasks need the datasets package: pip install datasets==5.2.0") from None
    try:
        data = datasets.load_dataset(source.hub, source.hub_config, split=source.split)
    except Exception as exc:  # noqa: BLE001 -- network, unknown name, unknown split: all the user's to fix
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
