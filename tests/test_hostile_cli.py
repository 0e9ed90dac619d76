"""Issue 22: hostile and mistaken input to the command line (fake engines, `--config tiny`).

Every user mistake ends with ONE line on stderr naming the fix and exit code 2, never a
traceback; secrets never reach a file or the terminal; text from the user, a data file or a model
cannot drive the terminal; an output folder has one writer at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookahead.config import load_config
from lookahead.errors import ConfigError
from lookahead.eval import harness as h

ROWS = [{"q": f"Question {i}?", "sol": "#### 72"} for i in range(3)]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "lookahead.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env, check=False
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 2, one line on stderr holding every fragment, no traceback anywhere."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def task_file(tmp_path: Path, question: str = "q", answer: str = "sol") -> Path:
    path = tmp_path / f"set-{question}.jsonl"
    rows = [{question: r["q"], answer: r["sol"]} for r in ROWS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def bench_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    """bench reads the jsonl task's default fields (problem, answer)."""
    task = task_file(tmp_path, "problem", "answer")
    return ["bench", "--task", f"jsonl:{task}", "--config", "tiny", "--out", str(out), *extra]


def eval_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--task", f"jsonl:{task_file(tmp_path)}", "--question-field", "q", "--answer-field", "sol",
            "--config", "tiny", "--out", str(out), "--no-plots", "--no-warmup", *extra]  # fmt: skip


# -- 1. non-finite numbers -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["temperature=.nan"], "temperature"),
        (["temperature=.inf"], "temperature"),
        (["target.timeout_s=-.inf"], "target.timeout_s"),
        (["draft_sampling.top_p=.nan"], "draft_sampling.top_p"),
        (["verifier=numeric", "verifier.options.threshold=.nan"], "verifier.options.threshold"),
        (["verifier.options={threshold: .inf}"], "verifier.options.threshold"),
    ],
)
def test_set_refuses_nan_and_infinity_naming_the_key(overrides, key):
    """--set temperature=.nan was accepted (NaN passes every < and > check): now refused, key named."""
    args = [a for o in overrides for a in ("--set", o)]
    assert_one_line_error(run_cli("solve", "q", "--config", "tiny", *args), key, "finite")


def test_yaml_preset_refuses_infinity(tmp_path):
    """call_timeout_s: .inf in a config file passed the `<= 0` check; now refused naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text("target: {backend: fake, model: fake}\ndraft: {backend: fake, model: fake}\ncall_timeout_s: .inf\n")
    with pytest.raises(ConfigError, match="call_timeout_s must be a finite number"):
        load_config(path)
    assert_one_line_error(run_cli("solve", "q", "--config", str(path)), "call_timeout_s", "finite")


def test_eval_run_override_refuses_nan(tmp_path):
    """A per-run override lr[temperature=.nan] is refused like --set, naming run and key."""
    proc = run_cli(*eval_args(tmp_path, tmp_path / "out", "--modes", "ar,lr[temperature=.nan]"))
    assert_one_line_error(proc, "temperature", "finite")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["serve", "--config", "tiny", "--timeout", "inf"], "--timeout"),
        (["serve", "--config", "tiny", "--timeout", "nan"], "--timeout"),
        (["distill", "--config", "tiny", "--lr", "nan"], "--lr"),
        (["distill", "--config", "tiny", "--epochs", "inf"], "--epochs"),
    ],
)
def test_float_options_refuse_nan_and_infinity(args, flag):
    """typer parses 'inf' and 'nan'; `serve --timeout inf` died in int(inf) with a traceback."""
    assert_one_line_error(run_cli(*args), flag, "finite")


# -- 2. verifier option types -------------------------------------------------------------------
def test_verifier_option_of_the_wrong_type_names_the_option_and_type():
    """verifier.options.threshold=abc printed "'<' not supported between ..."; now option and type."""
    proc = run_cli("solve", "q", "--config", "tiny", "--set", "verifier=numeric", "--set", "verifier.options.threshold=abc")
    assert_one_line_error(proc, "options.threshold must be a number", "numeric")
    assert "not supported" not in proc.stderr


# -- 3. YAML syntax errors ----------------------------------------------------------------------
def test_yaml_syntax_error_is_one_file_line_col_line(tmp_path):
    """A broken config file printed several lines of parser text; now FILE:LINE:COL: problem."""
    path = tmp_path / "broken.yaml"
    path.write_text("gamma: 2\nverifier: {name: exact\nmode: lr\n")
    proc = run_cli("solve", "q", "--config", str(path))
    assert_one_line_error(proc, f"{path}:3:5: ")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+:\d+: \S"):
        load_config(path)


# -- 4. --out that cannot be a folder -----------------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "bench"])
def test_out_that_is_a_file_or_under_a_file_is_one_line(tmp_path, command):
    """--out FILE raised FileExistsError, --out FILE/sub FileNotFoundError/NotADirectoryError: tracebacks."""
    existing = tmp_path / "taken"
    existing.write_text("not a folder")
    for out, message in ((existing, "is a file"), (existing / "sub", "cannot be created")):
        args = eval_args(tmp_path, out) if command == "eval" else bench_args(tmp_path, out, "--runs", "ar,lr")
        assert_one_line_error(run_cli(*args), f"--out {out}", message)


def test_calibrate_out_under_a_file_is_one_line(tmp_path):
    """calibrate --out FILE/sub raised FileExistsError from mkdir: a traceback."""
    existing = tmp_path / "taken"
    existing.write_text("not a folder")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"question": "q?"}) + "\n")
    proc = run_cli("calibrate", "--config", "tiny", "--data", str(data), "--out", str(existing / "sub"), "--verifiers", "exact")
    assert_one_line_error(proc, f"--out {existing / 'sub'}", "cannot be created")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_without_write_permission_is_one_line(tmp_path):
    """A folder the user cannot write to: one line, exit 2 (was PermissionError)."""
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(run_cli(*eval_args(tmp_path, locked / "out")), "cannot be created")
        assert_one_line_error(run_cli(*eval_args(tmp_path, locked)), "not writable")
    finally:
        locked.chmod(0o700)


# -- 5. one writer per folder; duplicates dropped -----------------------------------------------
def test_second_writer_on_the_same_folder_is_refused(tmp_path):
    """Two invocations on one --out wrote every record twice; the second one is now refused
    (the lock is an flock on OUT/.lock: released on close, exit or crash)."""
    out = tmp_path / "out"
    settings = {"task": "t", "config": {}}
    first = h.open_output(out, settings)
    with pytest.raises(ConfigError, match="another lookahead invocation .*pid \\d+.* is writing to"):
        h.open_output(out, settings)
    proc = run_cli(*eval_args(tmp_path, out))  # another process, through the CLI
    assert_one_line_error(proc, "is writing to", "another --out")
    first.close()
    h.open_output(out, settings).close()  # released: the next invocation may write


def test_lock_dies_with_its_process(tmp_path):
    """A writer killed mid-run leaves no stale lock: the next invocation goes ahead."""
    out = tmp_path / "out"
    code = f"from lookahead.eval import harness as h; from pathlib import Path; h.open_output(Path({str(out)!r}), {{}}); import os; os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 9
    h.open_output(out, {}).close()


def test_resume_drops_duplicate_records_and_counts_each_key_once(tmp_path):
    """A records.jsonl with every record twice (two writers at once) is rewritten with the first of
    each key on resume, and the summary counts each key once."""
    out = tmp_path / "out"
    assert run_cli(*eval_args(tmp_path, out, "--modes", "ar,lr")).returncode == 0
    records = out / h.RECORDS_FILE
    lines = records.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    doubled = [line for line in lines for _ in range(2)]
    first = json.loads(doubled[0])
    doubled[1] = json.dumps({**first, "answer": "a later duplicate"})
    records.write_text("".join(line + "\n" for line in doubled), encoding="utf-8")

    proc = run_cli(*eval_args(tmp_path, out, "--modes", "ar,lr", "--json"))
    assert proc.returncode == 0, proc.stderr
    assert "dropped 6 duplicate records" in proc.stderr
    kept = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines()]
    assert len(kept) == 6 and len({h.record_key(r) for r in kept}) == 6
    assert kept[0]["answer"] == first["answer"]  # the first record of a key is the one kept
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["records"] == 6 and [r["rows"] for r in summary["runs"]] == [3, 3]


# -- 6. secrets ---------------------------------------------------------------------------------
SECRETS = ("sk-SECRET-target", "hf-SECRET-token", "sk-SECRET-run")


def assert_no_secret(*texts: str, folder: Path | None = None) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    for path in (folder.rglob("*") if folder is not None else ()):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, path


def test_solve_json_hides_secrets():
    """--set target.api_key=... was printed in clear in the --json line's config."""
    proc = run_cli("solve", "q", "--config", "tiny", "--json", "--set", f"target.api_key={SECRETS[0]}",
                   "--set", f"draft.options={{hf_token: {SECRETS[1]}}}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.splitlines()[-1])
    assert payload["config"]["target"]["api_key"] == "***"
    assert payload["config"]["draft"]["options"]["hf_token"] == "***"
    assert_no_secret(proc.stdout, proc.stderr)


def test_eval_and_bench_write_no_secret_anywhere(tmp_path):
    """run.json, records, summary.json/md, the bench report and the terminal held the key in clear
    (in the config, the command line and a run label like lr[draft.api_key=...])."""
    secret_args = ["--set", f"target.api_key={SECRETS[0]}", "--set", f"target.options={{hf_token: {SECRETS[1]}}}"]
    out = tmp_path / "eval"
    proc = run_cli(*eval_args(tmp_path, out, "--modes", f"ar,lr[draft.api_key={SECRETS[2]}]", "--json", *secret_args))
    assert proc.returncode == 0, proc.stderr
    assert_no_secret(proc.stdout, proc.stderr, folder=out)
    labels = [r["label"] for r in json.loads(proc.stdout.splitlines()[-1])["runs"]]
    assert labels == ["ar", "lr[draft.api_key=***]"]

    bench_out = tmp_path / "bench" / "b"
    proc = run_cli(*bench_args(tmp_path, bench_out, "--runs", f"ar,lr[draft.api_key={SECRETS[2]}]", "--json", *secret_args))
    assert proc.returncode == 0, proc.stderr
    assert_no_secret(proc.stdout, proc.stderr, folder=bench_out.parent)


def test_engines_still_get_the_real_secret():
    """Only what is shown is redacted: the run's overrides and the config keep the real value."""
    cfg = load_config("tiny", [f"target.api_key={SECRETS[0]}"])
    run = h.parse_run_specs(f"lr[draft.api_key={SECRETS[2]}]", cfg)[0]
    assert run.label == "lr[draft.api_key=***]"
    assert run.engine_overrides() == {"draft.api_key": SECRETS[2]}
    assert cfg.target.api_key == SECRETS[0] and cfg.public_dict()["target"]["api_key"] == "***"


# -- 7. control characters ----------------------------------------------------------------------
def test_solve_escapes_control_characters_but_keeps_the_json_exact(tmp_path):
    """An OSC title sequence in the question, and ESC / C1 bytes in a model's step, reached the
    terminal raw; now they are shown escaped, and the --json line still parses to the exact text."""
    script = tmp_path / "target.json"
    step = "Red \x1b[31mstep\x07 \x9b2J\u202e.\n\n"
    script.write_text(json.dumps({"steps": [step, "The final answer is \\boxed{72}."]}), encoding="utf-8")
    proc = run_cli("solve", "\x1b]0;pwned\x07 How many?", "--config", "tiny", "--mode", "ar",
                   "--set", f"target.model={script}", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in proc.stdout
    human = "\n".join(proc.stdout.splitlines()[:-1])
    assert "\\x1b]0;pwned\\x07" in human and "\\x1b[31m" in human
    assert json.loads(proc.stdout.splitlines()[-1])["text"].startswith(step)


def test_error_text_is_never_read_as_markup():
    """A key like 'x[/]' made rich raise a MarkupError (a traceback) while printing the error."""
    assert_one_line_error(run_cli("solve", "q", "--config", "tiny", "--set", "x[/]=1"), "unknown config key 'x[/]'")


# -- 8. speculated vs ar rounds -----------------------------------------------------------------
def test_solve_says_how_many_rounds_speculated_and_why_the_others_ran_ar(tmp_path):
    """A draft that is never right: adaptive γ falls back to ar rounds, and the summary says so."""
    draft, target = tmp_path / "draft.json", tmp_path / "target.json"
    draft.write_text(json.dumps({"steps": [f"Wrong {i}.\n\n" for i in range(20)]}))
    target.write_text(json.dumps({"steps": [f"S{i}.\n\n" for i in range(12)] + ["The final answer is \\boxed{72}."]}))
    proc = run_cli("solve", "q", "--config", "tiny", "--json", "--set", f"draft.model={draft}",
                   "--set", f"target.model={target}", "--set", "adaptive_gamma=true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout.splitlines()[-1])
    assert payload["speculated_rounds"] + payload["ar_rounds"] == payload["rounds"] == 13
    assert payload["ar_rounds"] >= 10 and "adaptive γ" in payload["fallback_reason"]
    assert "break-even" in payload["fallback_reason"]
    assert f"{payload['speculated_rounds']} speculated (γ≥1), {payload['ar_rounds']} plain ar rounds" in proc.stdout

    plain = json.loads(run_cli("solve", "q", "--config", "tiny", "--json").stdout.splitlines()[-1])
    assert (plain["speculated_rounds"], plain["ar_rounds"], plain["fallback_reason"]) == (1, 0, None)
    ar = json.loads(run_cli("solve", "q", "--config", "tiny", "--mode", "ar", "--json").stdout.splitlines()[-1])
    assert ar["speculated_rounds"] == 0 and ar["ar_rounds"] == ar["rounds"] and "mode ar" in ar["fallback_reason"]


def test_round_split_names_incomplete_drafts():
    """A round whose first draft step came out incomplete judged nothing: an ar round, said so."""
    from lookahead.cli.solve import round_split
    from lookahead.types import Result, StepRecord

    steps = [StepRecord(0, 0, 1, "a\n\n", "draft", 2, draft_text="a\n\n", target_text="a\n\n"),
             StepRecord(1, 0, 2, "b\n\n", "target", 2, target_text="b\n\n"),
             StepRecord(2, 1, 1, "c\n\n", "target", 2, target_text="c\n\n")]  # fmt: skip
    result = Result("a\n\nb\n\nc\n\n", "lr", steps, 1, 6, "eos", 0.1, 2, stats={"gamma_rounds": {"2": 2}})
    split = round_split(result, adaptive=False)
    assert (split.speculated, split.ar) == (1, 1) and "incomplete" in split.reason


# -- 9. data folder help ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["solve", "eval", "bench", "distill", "calibrate"])
def test_help_describes_the_packaged_data(command):
    """The help said the data folder defaults to ../shared/data; the test splits now ship in the package."""
    text = " ".join(run_cli(command, "--help").stdout.replace("│", " ").split())
    assert "../shared/data" not in text
    assert ("shipped inside the package" in text) if command in ("solve", "eval", "bench") else ("not shipped" in text)
