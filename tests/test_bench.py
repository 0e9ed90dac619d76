"""`lookahead bench`: one command, every run side by side, the report JSON + PNG, resume, the model.

Fake engines (configs/tiny.yaml) for the command; a tiny transformers pair (tests/tiny.py) for the
measured batch-cost curve and a transformers peer.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from lookahead.cli.bench import bench_command
from lookahead.engines.fake import FakeEngine
from lookahead.errors import ConfigError
from lookahead.eval import harness as h
from lookahead.eval.bench import (
    DEFAULT_RUNS,
    MAX_BATCH,
    default_runs,
    report_paths,
    speedup_model,
)
from lookahead.eval.peers import LLAMACPP_HINT

# The fake engine always answers 72 (lookahead/engines/fake.py DEFAULT_SCRIPT).
ROWS = [
    {"problem": "Natalia sold clips ...", "answer": "48 + 24 = 72\n#### 72"},
    {"problem": "How many clips?", "answer": "#### 72"},
    {"problem": "Janet's ducks ...", "answer": "#### 18"},
]
RUNS = "ar,sd,lr[gamma=1],lr[adaptive_gamma=true,gamma=2],lr+sd"


def labels(spec: str) -> list[str]:
    """Run labels of a run list (commas inside [...] stay)."""
    return re.split(r",(?![^\[]*\])", spec)


@pytest.fixture
def timed_fake(monkeypatch):
    """Fake engines that take 20 µs per token, so every time the speedup model reads is > 0
    (the loop rounds its times to 0.1 ms; an instant fake engine would report 0 target time)."""
    original = FakeEngine.from_config.__func__

    def from_config(cls, config):
        engine = original(cls, config)
        engine.delay_per_token = 2e-5
        return engine

    monkeypatch.setattr(FakeEngine, "from_config", classmethod(from_config))


def write_task(tmp_path: Path, rows=ROWS) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cli(*args: str):
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("bench")(bench_command)
    app.command("noop")(lambda: None)  # a second command keeps "bench" a subcommand, as in lookahead.cli
    return CliRunner().invoke(app, ["bench", *args])


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / h.RECORDS_FILE).read_text().splitlines()]


# -- the command on the fake engines ----------------------------------------------------------------
def test_bench_writes_every_run_the_model_rows_a_null_curve_and_a_png_then_resumes(tmp_path, timed_fake):
    """Guards the report of issue 10: every run with its figures, model rows for the lr runs with
    error = predicted / measured - 1, a null batch-cost curve with a reason (fake target), the PNG;
    a rerun resumes: no new record, no model loaded, the same runs in the report."""
    task, out = write_task(tmp_path), tmp_path / "bench" / "cpu"
    args = ["--config", "tiny", "--task", f"jsonl:{task}", "--runs", RUNS, "--out", str(out), "--json"]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    json_path, png_path = report_paths(out)
    assert json_path == tmp_path / "bench" / "cpu.json" and png_path == tmp_path / "bench" / "cpu.png"
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    assert len(records(out)) == 3 * 5 and (out / "summary.json").is_file()

    report = json.loads(json_path.read_text())
    assert report["command"].startswith("lookahead") and report["machine"]
    assert report["config"]["target"]["backend"] == "fake" and report["task"] == f"jsonl:{task}"
    assert report["baseline"] == "ar" and report["left_out"] == [] and report["png"] == "cpu.png"
    runs = {r["label"]: r for r in report["runs"]}
    assert list(runs) == labels(RUNS)
    for run in runs.values():
        assert run["finished_rows"] == 3 and run["speedup"] > 0 and run["tokens_per_s"] > 0
        assert run["accuracy"] == pytest.approx(2 / 3) and run["agreement_with_ar"] == 1.0
        assert set(run["time_split_s"]) == {"draft_s", "target_s", "verify_s", "other_s"}
    assert runs["lr[gamma=1]"]["acceptance_by_depth"] == [1.0] and runs["ar"]["acceptance_by_depth"] == []
    assert runs["sd"]["token_acceptance_length"] > 1 and runs["ar"]["token_acceptance_length"] is None
    assert runs["lr[gamma=1]"]["time_split_s"]["draft_s"] > 0 and runs["ar"]["time_split_s"]["draft_s"] == 0

    assert report["batch_cost"]["relative"] is None and "target.backend" in report["batch_cost"]["reason"]
    model = report["speedup_model"]
    assert model["reason"] is None and model["inputs"]["alpha"] and model["inputs"]["batch_cost"][0] == 1.0
    assert {"c", "verify_cost", "token_speedup", "draft_complete"} <= set(model["inputs"])
    for label in ("lr[gamma=1]", "lr[adaptive_gamma=true,gamma=2]", "lr+sd"):
        row = runs[label]["model"]
        assert row["predicted"] > 0 and row["measured"] == pytest.approx(runs[label]["speedup"], rel=0.01)
        assert row["error"] == pytest.approx(row["predicted"] / row["measured"] - 1, abs=1e-3)
    assert "gamma_rounds" in runs["lr[adaptive_gamma=true,gamma=2]"]["model"]
    assert "error" not in runs["sd"]["model"] and "not a prediction" in runs["sd"]["model"]["note"]
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["json"] == str(json_path) and [r["label"] for r in payload["runs"]] == list(runs)

    before = (out / h.RECORDS_FILE).read_text()
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert (out / h.RECORDS_FILE).read_text() == before  # nothing rerun
    assert [r["label"] for r in json.loads(json_path.read_text())["runs"]] == list(runs)


def test_interrupted_bench_keeps_records_and_resumes(tmp_path, monkeypatch):
    """Ctrl-C after one record: exit 130, the record is kept, the message says how to resume."""
    task, out = write_task(tmp_path), tmp_path / "b"

    def interrupted(reasoner, jobs, on_record):
        on_record(h.execute_job(reasoner, jobs[0]))
        raise KeyboardInterrupt

    monkeypatch.setattr(h, "run_sequential", interrupted)
    args = ["--config", "tiny", "--task", f"jsonl:{task}", "--runs", "ar,lr", "--out", str(out)]
    result = cli(*args)
    assert result.exit_code == 130 and "resume" in result.output and len(records(out)) == 1
    assert not report_paths(out)[0].exists()
    monkeypatch.undo()
    assert cli(*args).exit_code == 0 and len(records(out)) == 6


def test_default_runs_leave_out_the_llama_cpp_peers_when_it_is_missing(tmp_path, monkeypatch):
    """Without llama_cpp the default list runs without its two peers and says so in one line; a
    llama.cpp peer named in --runs is still refused with the install hint (exit 2)."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    task, out = write_task(tmp_path), tmp_path / "b"
    result = cli("--config", "tiny", "--task", f"jsonl:{task}", "--limit", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "leaving out peer:llamacpp, peer:llamacpp-lookup" in result.output
    report = json.loads(report_paths(out)[0].read_text())
    expected = [r for r in labels(DEFAULT_RUNS) if not r.startswith("peer:llamacpp")]
    assert [r["label"] for r in report["runs"]] == expected and len(expected) == 10
    assert report["left_out"] == ["peer:llamacpp", "peer:llamacpp-lookup"]
    assert {r["mode"] for r in records(out)} >= {"ar", "lr", "sd", "lr+sd", "peer:hf-assisted"}

    refused = cli("--config", "tiny", "--task", f"jsonl:{task}", "--runs", "ar,peer:llamacpp", "--out", str(out) + "2")
    assert refused.exit_code == 2 and LLAMACPP_HINT in refused.output and "Traceback" not in refused.output


def test_default_runs_leave_out_the_transformers_peers_over_a_server_target():
    """A target behind a server (target.backend openai) leaves out the peers that run transformers
    in-process, with the reason; our modes and the llama.cpp peers stay."""
    from lookahead.config import load_config

    runs, left_out = default_runs(load_config("cpu-llamacpp"))
    assert set(left_out) == {"peer:hf-assisted", "peer:hf-prompt-lookup"} | (
        {"peer:llamacpp", "peer:llamacpp-lookup"} & set(left_out))
    assert "target.backend is 'openai'" in left_out["peer:hf-assisted"]
    assert runs.startswith("ar,sd,lr[gamma=1,adaptive_gamma=false]") and "peer:hf" not in runs  # fixed γ: the preset adapts
    kept, none = default_runs(load_config("tiny"))
    assert "peer:hf-assisted" in kept and not {k for k in none if k.startswith("peer:hf")}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "ar,turbo"], "mode 'turbo' is unknown"),
        (["--runs", "lr[gama=1]"], "lr[gama=1]"),
        (["--set", "gamma=-1"], "gamma"),
        (["--out", "."], "give a folder name"),
    ],
)
def test_bench_user_errors_exit_2(tmp_path, args, message):
    """Bad runs, a bad override, an --out with no name: one line, exit code 2, nothing written."""
    task = write_task(tmp_path)
    base = {"--config": "tiny", "--task": f"jsonl:{task}", "--out": str(tmp_path / "b")}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = cli(*[x for kv in base.items() for x in kv])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b" / h.RECORDS_FILE).exists()


# -- the speedup model, hand computed ---------------------------------------------------------------
def _record(problem, run, mode, wall, draft_s=0.0, target_s=None, trace=(), drafted=0, rounds=4, overrides=None,
            gamma_rounds=None):  # fmt: skip
    return {"problem": problem, "sample": 0, "run": run, "mode": mode, "status": "ok", "overrides": overrides or {},
            "wall_time_s": wall, "draft_s": draft_s, "target_s": wall if target_s is None else target_s,
            "verify_s": 0.0, "rounds": rounds, "committed_steps": 4, "completion_tokens": 40,
            "drafted_steps": drafted, "trace": list(trace),
            "stats": {"draft_calls": drafted, "gamma_rounds": gamma_rounds or {}}}  # fmt: skip


def test_adaptive_run_is_predicted_over_the_depths_its_rounds_used():
    """Guards the adaptive prediction: expected steps over expected cost summed over its rounds
    (not the cost of the γ used most); peers are left out; a measured b(k) gives a second one.

    Units: ar 1 s per step (10 tokens). lr[gamma=1]: 4 rejected rounds, c = 0.4, b(2) = 1.6, so
    1 / (0.4 + 1.6) = 0.5 = 4 s / 8 s. Adaptive: 2 rounds at γ = 0 (cost 1) and 2 at γ = 1 (cost
    2): 4 steps / 6 = 0.667 = 4 s / 6 s."""
    rejected = [{"round": i, "depth": 1, "source": "target", "draft": "x\n\n", "target": "y\n\n"} for i in range(4)]
    mixed = rejected[:2] + [{"round": i, "depth": 1, "source": "target", "draft": None, "target": "y"} for i in (2, 3)]
    records = []
    for p in range(2):
        records += [
            _record(p, "ar", "ar", 4.0),
            _record(p, "lr[gamma=1]", "lr", 8.0, 1.6, 6.4, rejected, drafted=4, overrides={"gamma": 1}),
            _record(p, "lr[adaptive_gamma=true]", "lr", 6.0, 0.8, 5.2, mixed, drafted=2,
                    overrides={"adaptive_gamma": True}, gamma_rounds={"0": 2, "1": 2}),
            {**_record(p, "peer:hf-ar", "peer:hf-ar", 1.0)},
        ]  # fmt: skip
    fitted = speedup_model(records)
    assert fitted["batch_cost_source"] == "fitted" and "max_abs_error_fitted_b" not in fitted
    rows = {r["run"]: r for r in fitted["runs"]}
    assert "peer:hf-ar" not in rows
    assert rows["lr[gamma=1]"]["predicted"] == pytest.approx(0.5, abs=1e-3) and rows["lr[gamma=1]"]["measured"] == 0.5
    adaptive = rows["lr[adaptive_gamma=true]"]
    assert adaptive["gamma_rounds"] == {"0": 4, "1": 4}  # summed over both problems
    assert adaptive["predicted"] == pytest.approx(4 / 6, abs=1e-3) and adaptive["error"] == pytest.approx(0.0, abs=1e-3)
    assert fitted["max_abs_error"] == pytest.approx(0.0, abs=1e-3)

    # a measured b(2) = 2 replaces the fitted 1.6 in the headline prediction: 1 / (0.4 + 2) and
    # 4 / (2 + 2 * 2.4); the fitted-curve figures stay beside it
    measured = speedup_model(records, batch_cost=[1.0, 2.0])
    assert measured["batch_cost_source"] == "measured" and measured["inputs"]["batch_cost"] == [1.0, 2.0]
    rows = {r["run"]: r for r in measured["runs"]}
    assert rows["lr[gamma=1]"]["predicted"] == pytest.approx(1 / 2.4, abs=1e-3)
    assert rows["lr[gamma=1]"]["error"] == pytest.approx((1 / 2.4) / 0.5 - 1, abs=1e-3)
    assert rows["lr[gamma=1]"]["predicted_fitted_b"] == pytest.approx(0.5, abs=1e-3)
    adaptive = rows["lr[adaptive_gamma=true]"]
    assert adaptive["predicted"] == pytest.approx(4 / 6.8, abs=1e-3)
    assert adaptive["error_fitted_b"] == pytest.approx(0.0, abs=1e-3)
    assert measured["max_abs_error"] == pytest.approx(1 - (1 / 2.4) / 0.5, abs=1e-3)
    assert measured["max_abs_error_fitted_b"] == pytest.approx(0.0, abs=1e-3)
    assert measured["fitted_batch_cost"][1] == pytest.approx(1.6, abs=1e-3)


# -- a tiny transformers pair: the measured curve and a peer -----------------------------------------
def test_tiny_hf_pair_measures_the_batch_cost_curve_and_runs_a_peer(tmp_path):
    """On a real (tiny) transformers target the curve is measured once: 8 entries, b(1) = 1, kept in
    the folder for the resume; the prompt-lookup peer runs next to ar and lr with its token
    acceptance, and the lr rows get a prediction with the measured curve too."""
    from tiny import tiny_llama, train_tokenizer

    tok = train_tokenizer(1)
    for name, seed in (("target", 0), ("draft", 1)):
        tiny_llama(tok, seed=seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    config = {
        "mode": "ar", "step_delimiter": " ", "max_step_tokens": 7, "max_total_tokens": 30,
        "stop_at_final_answer": False, "prompt_template": "{question}", "temperature": 0.0,
        "target": {"model": str(tmp_path / "target"), "pad_batches": False},
        "draft": {"model": str(tmp_path / "draft"), "pad_batches": False},
    }  # fmt: skip
    (tmp_path / "tiny-hf.yaml").write_text(yaml.safe_dump(config))
    task = write_task(tmp_path, [{"problem": "Step 1: add", "answer": "12"}, {"problem": "A cat", "answer": "1"}])
    out = tmp_path / "b"
    args = ["--config", str(tmp_path / "tiny-hf.yaml"), "--task", f"jsonl:{task}", "--out", str(out),
            "--runs", "ar,lr[gamma=1],peer:hf-prompt-lookup"]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.output
    report = json.loads(report_paths(out)[0].read_text())
    curve = report["batch_cost"]
    assert curve["reason"] is None and len(curve["relative"]) == MAX_BATCH == len(curve["seconds"])
    assert curve["relative"][0] == 1.0 and all(s > 0 for s in curve["seconds"])
    assert (out / "batch_cost.json").is_file()
    runs = {r["label"]: r for r in report["runs"]}
    assert all(r["errors"] == 0 and r["finished_rows"] == 2 for r in runs.values()), result.output
    peer = runs["peer:hf-prompt-lookup"]
    assert peer["model"] is None and peer["token_acceptance_length"] >= 1 and peer["speedup"] > 0
    assert runs["lr[gamma=1]"]["model"]["predicted_fitted_b"] > 0

    stored = (out / "batch_cost.json").read_text()
    assert cli(*args).exit_code == 0  # resume: nothing to run, the stored curve is reused
    assert (out / "batch_cost.json").read_text() == stored
    assert json.loads(report_paths(out)[0].read_text())["batch_cost"] == curve


def test_report_paths_sit_beside_the_records_folder():
    assert report_paths(Path("docs/benchmarks/bench-cpu")) == (
        Path("docs/benchmarks/bench-cpu.json"), Path("docs/benchmarks/bench-cpu.png"))  # fmt: skip
    with pytest.raises(ConfigError, match="--out"):
        report_paths(Path("."))


def test_target_checks_from_measured_runs():
    """Each of issue 10's targets is computed from the runs it names, met or missed against its
    threshold, and None (not measured) when a run it needs is missing."""
    from lookahead.eval.bench import target_checks

    def run(label, mode, speedup, tok_s, other=0.01, wall=10.0, overrides=None):
        return {"label": label, "mode": mode, "speedup": speedup, "tokens_per_s": tok_s, "finished_rows": 3,
                "overrides": overrides or {}, "time_split_s": {"other_s": other}, "mean_wall_time_s": wall}

    runs = [
        run("ar", "ar", 1.0, 10.0),
        run("peer:hf-prompt-lookup", "peer:hf-prompt-lookup", 1.1, 11.0),
        run("lr[gamma=1]", "lr", 0.8, 8.0),
        run("lr[gamma=2]", "lr", 0.7, 7.0, other=0.5),  # 5% overhead: the worst
        run("lr[adaptive_gamma=true,gamma=4]", "lr", 0.78, 7.8, overrides={"adaptive_gamma": True}),
        run("lr+sd", "lr+sd", 2.6, 26.0),
    ]
    targets = {t["target"]: t for t in target_checks(runs, {"max_abs_error": 0.04})}
    assert targets["lr+sd speedup over ar"]["met"] is True
    assert targets["lr+sd tokens/s over the best transformers peer"]["value"] == pytest.approx(26.0 / 11.0, abs=1e-4)
    assert targets["adaptive lr speedup / best fixed-γ lr speedup"]["value"] == pytest.approx(0.975)
    assert targets["adaptive lr speedup / best fixed-γ lr speedup"]["met"] is True
    assert targets["adaptive lr speedup over ar"]["met"] is False
    worst = targets["orchestration overhead (other_s / wall time), worst of our runs"]
    assert worst["value"] == pytest.approx(0.05) and worst["met"] is False and worst["at_least"] is False
    assert targets["best lookahead tokens/s / llama.cpp ar tokens/s"]["met"] is None  # no llama.cpp run
    assert targets["speedup model error, worst |predicted / measured - 1|"]["met"] is True

    # a peer run with [overrides] still counts as that peer (here llama.cpp beside lookahead over a server)
    runs.append(run("peer:llamacpp[target.backend=hf]", "peer:llamacpp", 3.0, 20.0))
    targets = {t["target"]: t for t in target_checks(runs, {"max_abs_error": 0.04})}
    assert targets["best lookahead tokens/s / llama.cpp ar tokens/s"]["value"] == pytest.approx(26.0 / 20.0)
    # ar over a fast engine (e.g. a llama.cpp server) is that engine's speed, not ours: it does not count
    runs.append(run("ar[target.backend=openai]", "ar", 4.0, 40.0))
    targets = {t["target"]: t for t in target_checks(runs, {"max_abs_error": 0.04})}
    assert targets["best lookahead tokens/s / llama.cpp ar tokens/s"]["value"] == pytest.approx(26.0 / 20.0)


def test_bench_offset_points_the_runs_at_held_out_rows(tmp_path):
    """`lookahead bench` had no --offset although eval had: a bench could not run on held-out rows.
    --offset N --limit M runs problems N..N+M-1, recorded in run.json like eval's."""
    task, out = write_task(tmp_path), tmp_path / "b"
    result = cli("--config", "tiny", "--task", f"jsonl:{task}", "--runs", "ar", "--offset", "1", "--limit", "1",
                 "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [r["problem"] for r in records(out)] == [1]
    assert json.loads((out / h.RUN_FILE).read_text())["offset"] == 1
    past_the_end = cli("--config", "tiny", "--task", f"jsonl:{task}", "--runs", "ar", "--offset", "9", "--out", str(out))
    assert past_the_end.exit_code == 2 and "--offset 9" in past_the_end.output


def test_a_served_target_gets_its_batch_cost_curve_through_its_calls():
    """A target behind a server (vLLM, SGLang): the model cannot be timed in this process, so the
    curve is measured through the engine's calls, as the loop sees it. A mock whose step costs
    1 + 0.25 (k - 1) units at k rows gives back about that curve."""
    from lookahead.engines.base import EngineBase
    from lookahead.eval.bench import measure_batch_cost
    from lookahead.types import Completion

    class Served(EngineBase):
        name = "served"
        thread_safe = True

        def generate(self, prompts, params, stop=(), speculate=False):
            time.sleep(0.002 * params.max_new_tokens * (1 + 0.25 * (len(prompts) - 1)))
            return [Completion("x " * params.max_new_tokens, len(p.split()), params.max_new_tokens, "length")
                    for p in prompts]

        def count_tokens(self, text):
            return len(text.split())

    curve = measure_batch_cost(Served(), max_batch=4)
    assert curve["reason"] is None and curve["target"] == "served" and "through the engine" in curve["method"]
    assert curve["relative"][0] == 1.0
    assert curve["relative"][3] == pytest.approx(1.75, rel=0.2)
