"""scripts/bench_verifiers.py joins a calibration and an eval into one verifier comparison."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookahead.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("bench_verifiers", ROOT / "scripts" / "bench_verifiers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_and_eval_become_one_report_with_a_plot(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "Natalia sold clips. How many?", "answer": "#### 72"}\n'
                    '{"question": "What is 2+2?", "answer": "#### 4"}\n')  # fmt: skip
    runner = CliRunner()
    cal = runner.invoke(app, ["calibrate", "--config", "tiny", "--data", str(data), "--limit", "2",
                              "--verifiers", "exact,numeric", "--out", str(tmp_path / "cal")])  # fmt: skip
    assert cal.exit_code == 0, cal.output
    ev = runner.invoke(app, ["eval", "--config", "tiny", "--task", f"jsonl:{data}", "--question-field", "question",
                             "--answer-field", "answer", "--modes", "ar,lr,lr[verifier=numeric],lr[gamma=1]",
                             "--out", str(tmp_path / "ev")])  # fmt: skip
    assert ev.exit_code == 0, ev.output
    out = tmp_path / "verifiers"
    _script().main(["--calibration", f"fake={tmp_path / 'cal' / 'calibration.json'}",
                    "--eval", str(tmp_path / "ev" / "summary.json"), "--out", str(out)])  # fmt: skip
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["command"].startswith("python scripts/bench_verifiers.py --calibration fake=")
    section = report["calibration"]["fake"]
    assert set(section["verifiers"]) == {"exact", "numeric"} and section["pairs"] > 0
    assert section["verifiers"]["exact"]["pairs"] == section["pairs"]
    agreement = report["answer_agreement"]["verifiers"]
    assert set(agreement) == {"exact", "numeric"}  # lr[gamma=1] changes more than the verifier: left out
    assert agreement["numeric"]["run"] == "lr[verifier=numeric]" and agreement["exact"]["agreement_pairs"] == 2
    assert out.with_suffix(".png").stat().st_size > 1000


def test_missing_input_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _script().main(["--calibration", f"x={tmp_path / 'nope.json'}", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _script().main(["--out", str(tmp_path / "o")])
