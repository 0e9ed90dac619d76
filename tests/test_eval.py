"""`lookahead eval`: tasks, run specs, records, resume, summary and the CLI, on the fake engines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lookahead.cli.eval import eval_command
from lookahead.config import load_config
from lookahead.errors import ConfigError, DataError, PromptError
from lookahead.eval import harness as h
from lookahead.eval.report import PLOTS, summarize
from lookahead.eval.tasks import load_problems, resolve_task

# The fake engine always answers 72 (lookahead/engines/fake.py DEFAULT_SCRIPT).
ROWS = [
    {"q": "Natalia sold clips ...", "sol": "48 + 24 = 72\n#### 72", "uid": "a"},
    {"q": "How many clips?", "sol": "The answer is \\boxed{\\frac{144}{2}}.", "uid": "b"},
    {"q": "Janet's ducks ...", "sol": "#### 18", "uid": "c"},
]


def write_jsonl(path: Path, rows: list, blank_after: int | None = None) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cli(*args: str):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # a second command keeps "eval" a subcommand, as in lookahead.cli
    return CliRunner().invoke(app, ["eval", *args])


def eval_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--task", f"jsonl:{data}", "--question-field", "q", "--answer-field", "sol",
            "--config", "tiny", "--out", str(out), *extra]  # fmt: skip


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / h.RECORDS_FILE).read_text().splitlines()]


# -- tasks -------------------------------------------------------------------------------------
def test_jsonl_task_with_custom_fields_and_blank_lines(tmp_path):
    """Any JSONL works with named fields; blank lines are skipped but line numbers stay true."""
    source = resolve_task(f"jsonl:{write_jsonl(tmp_path / 'set.jsonl', ROWS, blank_after=1)}", "test", None, "q", "sol")
    problems = load_problems(source, offset=1, limit=5)
    assert [p.index for p in problems] == [1, 2]
    assert [p.line for p in problems] == [3, 4]  # line 2 is blank
    assert [p.reference for p in problems] == ["\\frac{144}{2}", "18"]
    assert problems[0].question == "How many clips?"


def test_gzipped_jsonl_is_read(tmp_path):
    """jsonl:PATH.gz is read like the plain file."""
    path = tmp_path / "set.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in ROWS) + "\n")
    assert len(load_problems(resolve_task(f"jsonl:{path}", question_field="q", answer_field="sol"))) == 3


def test_builtin_task_reads_the_split_file_from_the_data_dir(tmp_path):
    """gsm8k + --split train reads <data-dir>/gsm8k/train.jsonl and parses '#### N' references."""
    (tmp_path / "gsm8k").mkdir()
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", [{"question": "Q", "answer": "work\n#### 1,234"}])
    problems = load_problems(resolve_task("gsm8k", "train", tmp_path))
    assert problems[0].reference == "1234" and problems[0].question == "Q"
    with pytest.raises(DataError, match=r"gsm8k/test\.jsonl does not exist.*--data-dir"):
        resolve_task("gsm8k", "test", tmp_path)


def test_shared_data_files_have_the_fields_the_tasks_name():
    """The built-in tasks read the shared copies (first rows): fields and reference parsing agree."""
    for task, reference in (("gsm8k", "18"), ("aime24", None), ("math500", None)):
        try:
            source = resolve_task(task)
        except DataError:
            pytest.skip("shared data folder not present")
        problem = load_problems(source, limit=1)[0]
        assert problem.question and problem.reference
        if reference is not None:
            assert problem.reference == reference


def test_missing_file_and_unknown_task_are_named(tmp_path):
    """A missing JSONL and an unknown task spec raise DataError saying what to pass."""
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        resolve_task(f"jsonl:{tmp_path / 'nope.jsonl'}")
    with pytest.raises(DataError, match="unknown task 'gsm9k'.*jsonl:PATH"):
        resolve_task("gsm9k")


def test_missing_field_names_file_line_and_option(tmp_path):
    """A row without the named field: file:line, the fields it has, the option to set."""
    path = write_jsonl(tmp_path / "set.jsonl", [ROWS[0], {"question": "x", "sol": "1"}], blank_after=1)
    source = resolve_task(f"jsonl:{path}", question_field="q", answer_field="sol")
    expected = r"set\.jsonl:3: the row has no field 'q' \(fields: question, sol\); set --question-field"
    with pytest.raises(DataError, match=expected):
        load_problems(source)


def test_invalid_json_names_file_and_line(tmp_path):
    """A broken line is reported as file:line, not as a JSON traceback."""
    path = write_jsonl(tmp_path / "set.jsonl", [ROWS[0], '{"q": "x", "sol": '])
    with pytest.raises(DataError, match=r"set\.jsonl:2: not valid JSON"):
        load_problems(resolve_task(f"jsonl:{path}", question_field="q", answer_field="sol"))


def test_unparseable_reference_is_kept_ungraded(tmp_path):
    """An answer field without a value gives reference None instead of stopping the run."""
    path = write_jsonl(tmp_path / "set.jsonl", [{"q": "x", "sol": "#### "}])
    assert load_problems(resolve_task(f"jsonl:{path}", question_field="q", answer_field="sol"))[0].reference is None


# -- runs and jobs ----------------------------------------------------------------------------
def test_parse_run_specs_labels_and_typed_overrides():
    """Labels are the spec strings; overrides are typed like --set and validated up front."""
    runs = h.parse_run_specs("ar, lr[gamma=1],lr[gamma=4,verifier=normalized],lr+sd", load_config("tiny"))
    assert [r.label for r in runs] == ["ar", "lr[gamma=1]", "lr[gamma=4,verifier=normalized]", "lr+sd"]
    assert runs[2].overrides == {"gamma": 4, "verifier": "normalized"} and runs[2].mode == "lr"
    assert h.baseline_label(runs) == "ar"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ar,turbo", "mode 'turbo' is unknown"),
        ("lr[gama=2]", "unknown config key 'gama'"),
        ("lr[gamma=0]", "gamma"),
        ("lr[gamma=2", "unbalanced"),
        ("ar,,lr", "empty run"),
        ("lr,lr", "listed twice"),
        ("lr[mode=ar]", "give the mode before"),
        ("sd[target.speculation.method=bogus]", "target.speculation.method"),
    ],
)
def test_parse_run_specs_refuses_bad_specs(spec, message):
    """Every bad --modes value is a ConfigError naming the run."""
    with pytest.raises(ConfigError, match=message):
        h.parse_run_specs(spec, load_config("tiny"))


def test_plan_jobs_rotates_runs_and_seeds_samples(tmp_path):
    """Problem-major order with the first run rotating; seed + sample when sampling, same for all runs."""
    source = resolve_task(f"jsonl:{write_jsonl(tmp_path / 's.jsonl', ROWS)}", question_field="q", answer_field="sol")
    problems = load_problems(source)
    cfg = load_config("tiny", ["temperature=0.7", "seed=10"])
    runs = h.parse_run_specs("ar,lr", cfg)
    jobs = h.plan_jobs(problems, runs, 2, cfg, "t")
    assert [(j.problem.index, j.run.label) for j in jobs[:6:2]] == [(0, "ar"), (0, "lr"), (1, "lr")]
    assert {(j.run.label, j.sample, j.seed) for j in jobs} == {("ar", 0, 10), ("ar", 1, 11), ("lr", 0, 10), ("lr", 1, 11)}
    assert jobs[1].overrides() == {"seed": 11}
    greedy = h.plan_jobs(problems, runs, 2, load_config("tiny"), "t", done={(0, "ar", 0)})
    assert all(j.seed is None for j in greedy) and len(greedy) == 11


def test_equal_hardware_gives_ar_the_draft_replicas():
    """With replicas, ar gets target + draft replicas; in process nothing changes."""
    cfg = load_config("tiny")
    assert h.equal_hardware_config(cfg) == (cfg, False)
    cfg.target.replicas, cfg.draft.replicas = 2, 1
    ar_cfg, applied = h.equal_hardware_config(cfg)
    assert applied and ar_cfg.target.replicas == 3 and cfg.target.replicas == 2


class FlakyReasoner:
    """Stands in for LookaheadReasoner: raises PromptError on one question, else delegates."""

    def __init__(self, inner, bad_question):
        self.inner, self.bad = inner, bad_question

    def generate(self, question, **kwargs):
        if question == self.bad:
            raise PromptError("the prompt has 9999 tokens but the target's context holds 2048")
        return self.inner.generate(question, **kwargs)


def test_lookahead_error_becomes_an_error_row_and_the_run_goes_on(tmp_path):
    """One problem raising a LookaheadError is recorded as an error; the others still run."""
    from lookahead.loop import LookaheadReasoner

    cfg = load_config("tiny")
    source = resolve_task(f"jsonl:{write_jsonl(tmp_path / 's.jsonl', ROWS)}", question_field="q", answer_field="sol")
    problems = load_problems(source)
    runs = h.parse_run_specs("ar,lr", cfg)
    store = h.RecordStore(tmp_path / "records.jsonl")
    reasoner = FlakyReasoner(LookaheadReasoner.from_config(cfg), problems[1].question)
    h.run_all(reasoner, h.plan_jobs(problems, runs, 1, cfg, source.name), store, warmup=False)
    errors = [r for r in store.records if r["status"] == "error"]
    assert len(store.records) == 6 and {r["problem"] for r in errors} == {1} and len(errors) == 2
    assert "PromptError" in errors[0]["error"] and errors[0]["correct"] is False
    summary = summarize(store.records, runs, {})
    assert [r["errors"] for r in summary["runs"]] == [1, 1]
    assert summary["runs"][1]["speedup_problems"] == 2  # only problems both runs finished


# -- summary -------------------------------------------------------------------------------------
def fake_record(problem, run, wall, answer="1", correct=True, sample=0, status="ok", reference="1"):
    return {
        "problem": problem, "run": run, "sample": sample, "status": status, "answer": answer,
        "correct": correct, "reference": reference, "wall_time_s": wall, "completion_tokens": 10,
        "drafted_steps": 4 if run != "ar" else 0, "accepted_steps": 2 if run != "ar" else 0,
        "acceptance_by_depth": [0.75, 0.25] if run != "ar" else [], "rounds": 2, "committed_steps": 4,
        "finish_reason": "answer", "error": None, "draft_s": 0.1, "target_s": 0.5, "verify_s": 0.0, "other_s": 0.1,
    }  # fmt: skip


def test_speedup_is_summed_time_over_problems_both_finished():
    """Speedup = sum(ar)/sum(run) over common problems, plus the median ratio; n/a without ar."""
    runs = h.parse_run_specs("ar,lr", load_config("tiny"))
    records = [
        fake_record(0, "ar", 4.0), fake_record(1, "ar", 2.0), fake_record(2, "ar", 9.0),
        fake_record(0, "lr", 1.0), fake_record(1, "lr", 2.0, answer="2", correct=False),
        fake_record(2, "lr", 0.0, status="error", answer=None, correct=False),
    ]  # fmt: skip
    lr = summarize(records, runs, {})["runs"][1]
    assert lr["speedup"] == pytest.approx(6.0 / 3.0) and lr["speedup_median"] == pytest.approx(2.5)
    assert lr["speedup_problems"] == 2 and lr["agreement_with_ar"] == pytest.approx(0.5)
    assert lr["accuracy"] == pytest.approx(1 / 3) and lr["accuracy_stderr"] == pytest.approx(1 / 3)
    assert lr["step_acceptance"] == pytest.approx(0.5) and lr["acceptance_by_depth"] == [0.75, 0.25]
    alone = summarize([r for r in records if r["run"] == "lr"], runs[1:], {})["runs"][0]
    assert alone["speedup"] is None and alone["agreement_with_ar"] is None


def test_accuracy_averages_samples_per_problem_then_problems():
    """With samples, stderr is over per-problem means; unparseable references are not graded."""
    runs = h.parse_run_specs("lr", load_config("tiny"))
    records = [
        fake_record(0, "lr", 1, sample=0), fake_record(0, "lr", 1, sample=1, correct=False),
        fake_record(1, "lr", 1, sample=0), fake_record(1, "lr", 1, sample=1),
        fake_record(2, "lr", 1, correct=None, reference=None), fake_record(3, "lr", 1, answer=None, correct=False),
    ]  # fmt: skip
    run = summarize(records, runs, {})["runs"][0]
    assert run["accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert run["graded"] == 5 and run["bad_reference"] == 1 and run["no_answer"] == 1 and run["unparseable"] == 2


# -- the command, end to end on the fake engines --------------------------------------------------
def test_eval_end_to_end_writes_records_summary_and_plots(tmp_path):
    """3 problems x 3 runs: records with the documented fields, summary.json/.md, three PNGs, JSON line."""
    data, out = write_jsonl(tmp_path / "set.jsonl", ROWS), tmp_path / "out"
    result = cli(*eval_args(data, out, "--modes", "ar,lr,lr[gamma=1]", "--json"))
    assert result.exit_code == 0, result.output
    records = read_records(out)
    assert len(records) == 9 and len({h.record_key(r) for r in records}) == 9
    first = records[0]
    for key in ("problem", "run", "sample", "question", "answer", "reference", "correct", "prompt_tokens",
                "completion_tokens", "wall_time_s", "draft_s", "target_s", "verify_s", "other_s",
                "drafted_steps", "accepted_steps", "acceptance_by_depth", "spec", "finish_reason"):  # fmt: skip
        assert key in first
    assert {r["answer"] for r in records} == {"72"}
    summary = json.loads((out / "summary.json").read_text())
    by_label = {r["label"]: r for r in summary["runs"]}
    assert by_label["ar"]["accuracy"] == pytest.approx(2 / 3)  # 72, \frac{144}{2} right; 18 wrong
    assert by_label["lr"]["step_acceptance"] == 1.0 and by_label["lr"]["acceptance_by_depth"] == [1.0, 1.0, 1.0]
    assert by_label["lr[gamma=1]"]["acceptance_by_depth"] == [1.0]
    assert by_label["lr"]["agreement_with_ar"] == 1.0 and by_label["lr"]["speedup"] is not None
    md = (out / "summary.md").read_text()
    assert "| lr[gamma=1] |" in md and "speedup vs ar" in md
    for name in PLOTS:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["baseline"] == "ar" and [r["label"] for r in payload["runs"]] == ["ar", "lr", "lr[gamma=1]"]


def test_resume_after_a_kill_mid_line_neither_duplicates_nor_loses(tmp_path):
    """A torn last line is dropped and rerun; complete lines are kept byte for byte; no key twice."""
    data, out = write_jsonl(tmp_path / "set.jsonl", ROWS), tmp_path / "out"
    assert cli(*eval_args(data, out, "--modes", "ar,lr", "--no-plots")).exit_code == 0
    lines = (out / h.RECORDS_FILE).read_text().splitlines(keepends=True)
    kept = "".join(lines[:4])
    (out / h.RECORDS_FILE).write_text(kept + lines[4][: len(lines[4]) // 2])  # killed mid-write
    result = cli(*eval_args(data, out, "--modes", "ar,lr", "--no-plots"))
    assert result.exit_code == 0, result.output
    assert "torn" in result.output
    text = (out / h.RECORDS_FILE).read_text()
    assert text.startswith(kept)
    keys = [h.record_key(json.loads(line)) for line in text.splitlines()]
    assert len(keys) == 6 and len(set(keys)) == 6
    result = cli(*eval_args(data, out, "--modes", "ar,lr", "--no-plots"))  # nothing left to do
    assert result.exit_code == 0 and len((out / h.RECORDS_FILE).read_text().splitlines()) == 6


def test_resume_extends_limit_and_refuses_other_settings(tmp_path):
    """More problems may be added on resume; another config is refused until --force-new."""
    data, out = write_jsonl(tmp_path / "set.jsonl", ROWS), tmp_path / "out"
    assert cli(*eval_args(data, out, "--modes", "ar", "--limit", "1", "--no-plots")).exit_code == 0
    assert cli(*eval_args(data, out, "--modes", "ar", "--limit", "2", "--no-plots")).exit_code == 0
    assert len(read_records(out)) == 2
    refused = cli(*eval_args(data, out, "--modes", "ar", "--set", "max_total_tokens=99", "--no-plots"))
    assert refused.exit_code == 2 and "max_total_tokens" in refused.output and "--force-new" in refused.output
    fresh = cli(*eval_args(data, out, "--modes", "ar", "--set", "max_total_tokens=99", "--no-plots", "--force-new"))
    assert fresh.exit_code == 0, fresh.output
    assert len(read_records(out)) == 3 and len(list(out.glob("previous-*/records.jsonl"))) == 1


def test_ctrl_c_keeps_records_says_how_to_resume_and_exits_130(tmp_path, monkeypatch):
    """An interrupt after one record: exit 130, the record is kept, the rerun completes the rest."""
    data, out = write_jsonl(tmp_path / "set.jsonl", ROWS), tmp_path / "out"

    def interrupted(reasoner, jobs, on_record):
        on_record(h.execute_job(reasoner, jobs[0]))
        raise KeyboardInterrupt

    monkeypatch.setattr(h, "run_sequential", interrupted)
    result = cli(*eval_args(data, out, "--modes", "ar,lr", "--no-plots"))
    assert result.exit_code == 130 and "resume" in result.output and str(out) in result.output
    assert len(read_records(out)) == 1
    monkeypatch.undo()
    assert cli(*eval_args(data, out, "--modes", "ar,lr", "--no-plots")).exit_code == 0
    assert len({h.record_key(r) for r in read_records(out)}) == len(read_records(out)) == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--modes", "ar,turbo"], "mode 'turbo' is unknown"),
        (["--modes", "lr[gama=1]"], "lr[gama=1]"),  # the label is shown, not eaten as markup
        (["--samples", "0"], "--samples must be >= 1"),
        (["--question-field", "question"], "set.jsonl:1: the row has no field 'question'"),
    ],
)
def test_cli_user_errors_exit_2(tmp_path, extra, message):
    """Bad --modes, an unavailable pool, bad counts, a wrong field: one line, exit code 2, no output folder."""
    data, out = write_jsonl(tmp_path / "set.jsonl", ROWS), tmp_path / "out"
    args = eval_args(data, out)
    if "--question-field" in extra:
        args[args.index("--question-field") + 1] = extra[1]
        extra = []
    result = cli(*args, *extra)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (out / h.RECORDS_FILE).exists()


def test_run_that_changes_an_engine_gets_its_own_reasoner(tmp_path):
    """``lr[draft.model=FILE]`` runs on a reasoner built with that draft; the other runs keep the
    base one, jobs keep their per-problem rotation, and the extra reasoner is closed at the end."""
    from lookahead.loop import LookaheadReasoner

    script = tmp_path / "other.yaml"
    script.write_text("steps: ['Something else entirely.\\n\\n', 'The final answer is \\\\boxed{1}.']\n")
    cfg = load_config("tiny")
    source = resolve_task(f"jsonl:{write_jsonl(tmp_path / 's.jsonl', ROWS)}", question_field="q", answer_field="sol")
    problems = load_problems(source)
    runs = h.parse_run_specs(f"ar,lr,lr[draft.model={script}]", cfg)
    assert runs[2].engine_overrides() == {"draft.model": str(script)}
    jobs = h.plan_jobs(problems, runs, 1, cfg, source.name)
    assert "draft.model" not in jobs[0].overrides()  # engine keys never reach generate()
    store = h.RecordStore(tmp_path / "records.jsonl")
    with LookaheadReasoner.from_config(cfg) as reasoner:
        h.run_all(reasoner, jobs, store, warmup=False)
        assert reasoner.draft.name == "fake"
    by_run = {r: [x for x in store.records if x["run"] == r] for r in ("ar", "lr", f"lr[draft.model={script}]")}
    assert all(len(v) == 3 and all(x["status"] == "ok" for x in v) for v in by_run.values())
    # the default draft follows the target's script: accepted; the other script never is
    assert sum(x["accepted_steps"] for x in by_run["lr"]) > 0
    assert sum(x["accepted_steps"] for x in by_run[f"lr[draft.model={script}]"]) == 0
    other = by_run[f"lr[draft.model={script}]"]
    assert [x["completion"] for x in by_run["ar"]] == [x["completion"] for x in other]  # exact verifier: lossless
    assert [x["run"] for x in store.records[:3]] == [r.label for r in runs]  # rotation: problem 0 starts with ar
    assert store.records[3]["run"] == "lr"  # problem 1 starts with the second run


def test_folder_written_with_a_secret_in_clear_resumes_and_loses_it(tmp_path):
    """Folders from before secrets were hidden hold api_key in clear in run.json: resuming one is
    not refused as "other settings" (a key is not part of what is evaluated) and rewrites it hidden."""
    out = tmp_path / "out"
    out.mkdir()
    old = {"task": "t", "config": {"target": {"api_key": "sk-OLD"}},
           "invocations": [{"time": "x", "command": "lookahead eval --set target.api_key=sk-OLD"}]}  # fmt: skip
    (out / h.RUN_FILE).write_text(json.dumps(old), encoding="utf-8")
    new = {"task": "t", "config": {"target": {"api_key": "***"}}, "command": "lookahead eval --set target.api_key=***"}
    h.open_output(out, new).close()
    assert "sk-OLD" not in (out / h.RUN_FILE).read_text(encoding="utf-8")


def test_a_concurrent_runner_runs_each_run_as_its_own_block(tmp_path):
    """--concurrency K: each run's jobs go to the runner as one block (K in flight), never mixed with
    another run's, so a run's wall times are its own under that load; plan order is kept within a block."""
    from lookahead.loop import LookaheadReasoner

    cfg = load_config("tiny")
    source = resolve_task(f"jsonl:{write_jsonl(tmp_path / 's.jsonl', ROWS)}", question_field="q", answer_field="sol")
    problems = load_problems(source)
    runs = h.parse_run_specs("ar,lr[gamma=1],sd", cfg)
    jobs = h.plan_jobs(problems, runs, 1, cfg, source.name)
    blocks: list[list[tuple[str, int]]] = []

    def run_jobs(reasoner, batch, on_record):
        blocks.append([(j.run.label, j.problem.index) for j in batch])
        for job in batch:
            on_record(h.execute_job(reasoner, job))

    store = h.RecordStore(tmp_path / "records.jsonl")
    with LookaheadReasoner.from_config(cfg) as reasoner:
        h.run_all(reasoner, jobs, store, run_jobs, warmup=False)
    assert [b[0][0] for b in blocks] == ["ar", "lr[gamma=1]", "sd"]
    assert all(len({label for label, _ in b}) == 1 and [i for _, i in b] == [0, 1, 2] for b in blocks)
    assert len(store.records) == 9


def test_every_concurrent_block_starts_with_cleared_prefix_caches(tmp_path, monkeypatch, caplog):
    """--concurrency K: before each run's block the loaded engines' prefix caches are cleared (a run
    after another would find the prompts, and the target's greedy steps, cached by it); an engine
    that cannot clear its cache is named once in a warning."""
    from lookahead.loop import LookaheadReasoner

    cfg = load_config("tiny")
    source = resolve_task(f"jsonl:{write_jsonl(tmp_path / 's.jsonl', ROWS)}", question_field="q", answer_field="sol")
    runs = h.parse_run_specs("ar,lr[gamma=1]", cfg)
    jobs = h.plan_jobs(load_problems(source), runs, 1, cfg, source.name)
    events: list[str] = []

    def run_jobs(reasoner, batch, on_record):
        events.append(batch[0].run.label)
        for job in batch:
            on_record(h.execute_job(reasoner, job))

    store = h.RecordStore(tmp_path / "records.jsonl")
    with LookaheadReasoner.from_config(cfg) as reasoner:
        real = reasoner.clear_prefix_caches
        monkeypatch.setattr(reasoner, "clear_prefix_caches", lambda: events.append("clear") or real())
        with caplog.at_level("WARNING", logger="lookahead.eval.harness"):
            h.run_all(reasoner, jobs, store, run_jobs, warmup=False)
    assert events == ["clear", "ar", "clear", "lr[gamma=1]"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "target engine's prefix cache cannot be cleared" in w]) == 1  # fake engines keep none
