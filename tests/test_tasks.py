"""`lookahead.eval.tasks`: where the built-in sets come from (the package, --data-dir, shared/data,
the hub) and how hostile JSONL input is reported."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lookahead import distill
from lookahead.errors import DataError
from lookahead.eval import tasks
from lookahead.eval.tasks import load_example, load_problems, resolve_task, split_file

PACKAGED = Path(tasks.__file__).resolve().parents[1] / "data"


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A fresh clone outside the team's layout: no $LOOKAHEAD_DATA_DIR, no shared/data anywhere,
    an empty cache, no `datasets` package (so no hub)."""
    monkeypatch.delenv("LOOKAHEAD_DATA_DIR", raising=False)
    monkeypatch.setenv("LOOKAHEAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tasks, "_shared_data_dirs", list)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


# -- the shipped data --------------------------------------------------------------------------
def test_packaged_test_splits_are_the_sources_bytes_with_their_licences():
    """lookahead/data holds the three test splits with the sha256 its SOURCES.md names, the licence
    texts it points to, and no GSM8K train (it is for distillation, not shipped)."""
    sources = (PACKAGED / "SOURCES.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\w+/test\.jsonl) \| \d+ \| \d+ \| ([0-9a-f]{64}) \|", sources, re.MULTILINE))
    assert set(table) == {"gsm8k/test.jsonl", "aime24/test.jsonl", "math500/test.jsonl"}
    for name, digest in table.items():
        assert hashlib.sha256((PACKAGED / name).read_bytes()).hexdigest() == digest, name
    for licence in set(re.findall(r"`(LICENSES/[\w.-]+\.txt)`", sources)):
        assert (PACKAGED / licence).is_file(), licence
    assert "Copyright (c) 2021 OpenAI" in (PACKAGED / "LICENSES/grade-school-math.txt").read_text()
    assert "Apache License" in (PACKAGED / "LICENSES/LookaheadReasoning.txt").read_text()
    assert "NLP Group @ HKUST" in (PACKAGED / "LICENSES/simpleRL-reason.txt").read_text()
    assert "Copyright (c) 2023 OpenAI" in (PACKAGED / "LICENSES/prm800k.txt").read_text()
    assert not (PACKAGED / "gsm8k" / "train.jsonl").exists()
    assert not (PACKAGED / "humaneval").exists()


def test_test_splits_come_from_the_package_outside_the_team_layout(bare):
    """Issue 22: with no --data-dir, no $LOOKAHEAD_DATA_DIR and no shared/data, --example gsm8k:0
    and the three built-in tasks read the package's copies (was: '.../shared/data/gsm8k/test.jsonl
    does not exist')."""
    example = load_example("gsm8k", 0)
    assert example.question.startswith("Janet") and example.reference == "18"
    for task, rows in (("gsm8k", 1319), ("aime24", 30), ("math500", 500)):
        source = resolve_task(task)
        assert source.path == PACKAGED / task / "test.jsonl"
        assert len(load_problems(source)) == rows


def test_solve_example_needs_no_data_folder(tmp_path):
    """The CLI from an empty working directory, $LOOKAHEAD_DATA_DIR unset: --example gsm8k:0 solves."""
    env = {k: v for k, v in os.environ.items() if k != "LOOKAHEAD_DATA_DIR"}
    proc = subprocess.run(
        [sys.executable, "-m", "lookahead.cli", "solve", "--example", "gsm8k:0", "--config", "tiny", "--json"],
        check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["reference"] == "18"


def test_data_dir_and_env_override_the_package(bare, monkeypatch):
    """--data-dir, else $LOOKAHEAD_DATA_DIR, is read instead of the shipped copy; a folder that lacks
    the file is named, never silently replaced by the package's copy."""
    mine = bare / "mine"
    write_lines(mine / "gsm8k" / "test.jsonl", [json.dumps({"question": "Q0", "answer": "#### 7"}).encode()])
    assert load_example("gsm8k", 0, data_dir=mine).question == "Q0"
    monkeypatch.setenv("LOOKAHEAD_DATA_DIR", str(mine))
    assert load_example("gsm8k", 0).reference == "7"
    assert resolve_task("gsm8k").path == mine / "gsm8k" / "test.jsonl"
    with pytest.raises(DataError, match=r"mine/math500/test\.jsonl does not exist .*from \$LOOKAHEAD_DATA_DIR"):
        load_example("math500", 0)
    with pytest.raises(DataError, match=r"elsewhere/gsm8k/test\.jsonl does not exist .*from --data-dir"):
        load_example("gsm8k", 0, data_dir=bare / "elsewhere")


# -- GSM8K train (distill, calibrate): not shipped ---------------------------------------------
def test_train_is_found_in_shared_data_beside_the_repo(bare, monkeypatch):
    """The team's layout keeps working: GSM8K train from a shared/data folder, also through the
    default the distill and calibrate commands take (`distill.default_questions_file`)."""
    shared = bare / "shared" / "data"
    write_lines(shared / "gsm8k" / "train.jsonl", [json.dumps({"question": "T1", "answer": "#### 1"}).encode()])
    monkeypatch.setattr(tasks, "_shared_data_dirs", lambda: [shared])
    assert split_file("gsm8k", "train") == shared / "gsm8k" / "train.jsonl"
    assert distill.read_questions(distill.default_questions_file()) == [(1, "T1")]
    assert resolve_task("gsm8k").path == PACKAGED / "gsm8k" / "test.jsonl"  # test splits: still the package's


def test_missing_train_is_one_line_naming_the_three_ways(bare):
    """Outside the layout, offline/without datasets: one line saying what is missing and how to get
    it (a data folder, a file of one's own, the hub), from the default the distill CLI takes."""
    with pytest.raises(DataError) as caught:
        distill.default_questions_file()
    message = str(caught.value)
    assert "\n" not in message
    assert "gsm8k/train.jsonl (gsm8k train) is not shipped" in message
    assert "datasets package is not installed" in message
    assert "LOOKAHEAD_DATA_DIR=DIR with DIR/gsm8k/train.jsonl" in message
    assert "--data FILE" in message and "pip install -e '.[hub]'" in message
    with pytest.raises(DataError, match=r"--data-dir DIR .*--task jsonl:FILE.*openai/gsm8k"):
        resolve_task("gsm8k", "train")  # eval's options
    with pytest.raises(DataError, match=r"aime24 train.*no hub copy is known") as caught:
        resolve_task("aime24", "train")
    assert "[hub]" not in str(caught.value)


def test_train_from_the_hub_is_saved_once_as_jsonl(bare, monkeypatch):
    """With datasets installed and online, GSM8K train is read from openai/gsm8k (config main) once
    and kept as JSONL in the cache; later runs read the file."""
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return [{"question": "H1", "answer": "#### 2"}, {"question": "H2 ✓", "answer": "#### 3"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    path = distill.default_questions_file()
    assert path == bare / "cache" / "data" / "gsm8k" / "train.jsonl"
    assert distill.read_questions(path) == [(1, "H1"), (2, "H2 ✓")]
    assert split_file("gsm8k", "train") == path and calls == [("openai/gsm8k", "main", "train")]
    assert not list(path.parent.glob("*.part"))


def test_hub_failure_is_named_with_the_other_ways(bare, monkeypatch):
    """Offline with datasets installed: the hub's error is in the one line, nothing is cached."""

    def load_dataset(name, config, split):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError, match=r"ConnectionError: Couldn't reach .*--data FILE") as caught:
        distill.default_questions_file()
    assert "\n" not in str(caught.value)
    assert not (bare / "cache" / "data" / "gsm8k" / "train.jsonl").exists()


# -- hostile JSONL -----------------------------------------------------------------------------
def test_non_utf8_line_is_named_by_file_and_line(tmp_path):
    """A Latin-1 byte on line 2 is reported as FILE:2: not valid UTF-8 (was: a byte position in the
    whole file, no line)."""
    path = write_lines(tmp_path / "set.jsonl", [b'{"q": "ok", "sol": "1"}', b'{"q": "caf\xe9", "sol": "2"}'])
    with pytest.raises(DataError, match=r"set\.jsonl:2: not valid UTF-8 \(byte 0xe9 at byte 11 of the line"):
        load_problems(resolve_task(f"jsonl:{path}", question_field="q", answer_field="sol"))
    gz = tmp_path / "set.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match=r"set\.jsonl\.gz:2: not valid UTF-8"):
        load_problems(resolve_task(f"jsonl:{gz}", question_field="q", answer_field="sol"))


def test_utf8_bom_is_accepted(tmp_path):
    """A file starting with a UTF-8 byte-order mark (Notepad) is read (was: 'not valid JSON'), in a
    jsonl: task, a .gz file and a --data-dir copy of a built-in set."""
    rows = [b'\xef\xbb\xbf{"q": "first", "sol": "#### 1"}', b'{"q": "second", "sol": "#### 2"}']
    path = write_lines(tmp_path / "bom.jsonl", rows)
    problems = load_problems(resolve_task(f"jsonl:{path}", question_field="q", answer_field="sol"))
    assert [(p.question, p.reference) for p in problems] == [("first", "1"), ("second", "2")]
    gz = tmp_path / "bom.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_problems(resolve_task(f"jsonl:{gz}", question_field="q", answer_field="sol"))[0].question == "first"
    write_lines(tmp_path / "data" / "gsm8k" / "test.jsonl", [b'\xef\xbb\xbf{"question": "Q", "answer": "#### 5"}'])
    assert load_example("gsm8k", 0, data_dir=tmp_path / "data").reference == "5"


def test_directory_given_as_jsonl_is_named_as_a_directory(tmp_path):
    """jsonl:DIR says the path is a directory, not a JSONL file (was: 'does not exist')."""
    with pytest.raises(DataError, match=r"is a directory, not a JSONL file"):
        resolve_task(f"jsonl:{tmp_path}")
    with pytest.raises(DataError, match=r"is a directory, not a JSONL file"):
        tasks._read_jsonl(tmp_path)
    with pytest.raises(DataError, match=r"is a directory, not a JSONL file; give --data"):
        distill.read_questions(tmp_path)
