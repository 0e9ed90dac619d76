"""The wheel, installed away from the source tree, solves `--example gsm8k:0` with nothing beside it.

A fresh clone or a `pip install` has no `shared/data` and no `$LOOKAHEAD_DATA_DIR` (issue 22):
the test splits, the presets and the shipped draft must travel inside the wheel. The test builds
the wheel from a copy of the working tree (``python -m build --wheel --no-isolation``), installs it
with ``--no-deps`` into a fresh venv whose only other packages are the current environment's
(a path-only ``.pth`` line, so the current environment's editable-install hook is not run and
``import lookahead`` can only find the wheel's copy), then runs ``lookahead solve`` from an empty
folder: the tiny preset (fake engines), then the real default preset (the embedded 135M target,
the wheel's draft). The converted GGUF is cached in ``~/.cache/lookahead``
(``$LOOKAHEAD_CACHE``), so only the first run on a machine converts it.

Slow (about 30 s on an idle 2-core machine, most of it the real solve): ``pytest -m slow tests/test_wheel.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGED_DATA = ["gsm8k/test.jsonl", "aime24/test.jsonl", "math500/test.jsonl", "SOURCES.md",
                 "LICENSES/grade-school-math.txt", "LICENSES/LookaheadReasoning.txt",
                 "LICENSES/simpleRL-reason.txt", "LICENSES/simplelr_math_eval.txt", "LICENSES/prm800k.txt"]  # fmt: skip


def _run(args: list, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, the fresh venv's python, an empty working folder, the environment to run in)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("LOOKAHEAD_DATA_DIR", "PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"  # the wheel must work offline; no time lost on network retries

    # build from a copy, so that build/ and *.egg-info never land in the working tree
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    shutil.copytree(REPO / "lookahead", source / "lookahead", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source], root, env, 300)
    (wheel,) = dist.glob("lookahead-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], root, env, 120)
    python = venv / "bin" / "python"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root, env, 60).stdout.strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}  # this environment's packages
    # a path-only .pth: the directories are appended to sys.path, their own .pth files (the
    # editable hook __editable__.lookahead-*.pth) are not processed
    (purelib / "_lookahead_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    _run([sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check", "-q",
          "install", "--no-deps", "--no-index", wheel], root, env, 300)  # fmt: skip
    work = root / "empty"
    work.mkdir()
    return wheel, python, work, env


@pytest.mark.slow
def test_wheel_carries_the_data_presets_and_draft(installed):
    """The wheel holds the three test splits with SOURCES.md and licences, the presets and the
    shipped draft, and no GSM8K train."""
    wheel = installed[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PACKAGED_DATA:
        assert f"lookahead/data/{name}" in names, name
    assert {"lookahead/configs/default.yaml", "lookahead/configs/tiny.yaml"} <= names
    draft = "lookahead/models/smollm2-135m-gsm8k-draft/"
    assert {draft + "model.safetensors", draft + "config.json", draft + "tokenizer.json"} <= names
    assert "lookahead/data/gsm8k/train.jsonl" not in names


@pytest.mark.slow
def test_installed_wheel_solves_an_example_from_an_empty_folder(installed):
    """`lookahead solve --example gsm8k:0` (tiny preset first, then the real default) exits 0 with
    a JSON answer, importing the venv's own lookahead, with no data folder anywhere near."""
    _, python, work, env = installed
    probe = "import lookahead, lookahead.eval.tasks as t; print(lookahead.__file__); print(t.split_file('gsm8k'))"
    where = _run([python, "-c", probe], work, env, 120).stdout.split()
    venv = python.parent.parent
    assert all(Path(p).is_relative_to(venv) for p in where), where
    lookahead = python.parent / "lookahead"
    tiny = _run([lookahead, "solve", "--example", "gsm8k:0", "--config", "tiny", "--json"], work, env, 120)
    assert json.loads(tiny.stdout.splitlines()[-1])["reference"] == "18"
    # the real default preset: the embedded GGUF target and the wheel's own draft (greedy, ~250
    # tokens, ~15 s on an idle 2-core CPU); its rounds decode at most 2 rows, so no batch-cost
    # measurement runs (`BatchCostCurve`) and nothing is written to the user's cache but the model.
    real = _run([lookahead, "solve", "--example", "gsm8k:0", "--json", "--quiet"], work, env, 240)
    payload = json.loads(real.stdout.splitlines()[-1])
    assert payload["reference"] == "18" and payload["mode"] == "lr"
    assert payload["answer"] and payload["completion_tokens"] > 0  # the 135M target answers (not always right)
    assert payload["config"]["draft"]["model"] == "smollm2-135m-gsm8k-draft"
    assert list(work.iterdir()) == []  # nothing written beside the run
