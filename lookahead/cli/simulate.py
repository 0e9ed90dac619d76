"""``lookahead simulate`` and ``lookahead profile``: plan a GPU deployment before renting it.

``simulate`` runs the real reasoner, rounds, adaptive policy and scheduler over modelled engines
whose costs and acceptance come from a profile (`lookahead.simulate`); ``profile`` measures such a
profile from your own engines. This file parses the options and prints.

Example:
    lookahead simulate                                        # the paper's setting, K = 1, 4, 16, 64
    lookahead simulate --profile qwen3-8b-1gpu-h100 --workload aime24 --k 1,8 --out runs/sim.json
    lookahead profile --limit 3 --out my-cpu.yaml && lookahead simulate --profile my-cpu.yaml --k 1
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lookahead.cli.common import (
    ConfigOpt,
    DataDirOpt,
    JsonOpt,
    LimitOpt,
    OffsetOpt,
    SetOpt,
    TaskOpt,
    console,
    err_console,
    fail,
    finite_options,
    json_line,
    quiet_libraries,
    terminal_safe,
)
from lookahead.errors import LookaheadError

PROFILE_HELP = "A shipped profile (paper-qwen3-32b-h100, qwen3-8b-1gpu-h100) or a YAML file written by `lookahead profile`."
RUNS_HELP = "Runs as in `lookahead eval --modes`, e.g. 'ar,lr\\[gamma=2],lr\\[adaptive_gamma=true]' (default: the profile's runs)."


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise fail(f"--k must be comma-separated integers, e.g. 1,4,16,64 (got {text!r})") from None
    if not ks or any(k < 1 for k in ks):
        raise fail(f"--k must list loads >= 1, e.g. 1,4,16,64 (got {text!r})")
    return ks


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"SIMULATION · profile {report['profile']} · workload {report['workload']}",
        caption="modelled engines, real loop and scheduler; speedup = tokens/s vs ar at the same K; "
        "orch = real CPU seconds of the loop per round and its share of the simulated wall time",
    )
    table.add_column("run", overflow="fold")
    for name in ("K", "tokens/s", "speedup", "p50 s", "p99 s", "γ rounds", "orch/round", "orch share"):
        table.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for r in report["runs"]:
        gammas = ",".join(f"{g}:{n}" for g, n in r["gamma_rounds"].items()) or "-"
        table.add_row(
            Text(terminal_safe(r["run"])), str(r["k"]), _fmt(r["throughput_tokens_s"], ".1f"), _fmt(r["speedup"], ".2f") + "x",
            _fmt(r["latency_p50_s"], ".1f"), _fmt(r["latency_p99_s"], ".1f"), gammas,
            _fmt((r["orchestration_s_per_round"] or 0) * 1e3, ".2f") + " ms", _fmt(r["orchestration_share"], ".2%"),
        )
    return table


def _print(report: dict[str, Any], out: Path | None, png: Path | None, as_json: bool) -> None:
    Console(highlight=False, width=max(console.width, 150)).print(_table(report))
    for row in report["reference_vs_ours"]:
        console.print(Text(f"K={row['k']}: our best ({row['best']}) / the reference configuration ({row['reference']}) "
                           f"= {row['ratio']:.2f}x"))
    for run, k in report["stops_paying_at_k"].items():
        console.print(Text(f"{run}: " + (f"stops paying at K={k}" if k is not None else "pays at every K simulated")))
    for row in (report.get("measured") or {}).get("runs", []):
        speedup = ""
        if row["speedup_error"] is not None:
            speedup = (f"; speedup simulated {row['simulated_speedup']:.2f}x, measured {row['measured_speedup']:.2f}x "
                       f"({row['speedup_error']:+.1%})")
        console.print(Text(f"{row['run']} K={row['k']}: simulated {row['simulated_s']:.2f} s per problem, measured "
                           f"{row['measured_s']:.2f} s ({row['error']:+.1%}){speedup}"))
    if out is not None:
        console.print(Text(f"report {out} and {png}"))
    if as_json:
        keys = ("run", "k", "throughput_tokens_s", "speedup", "latency_p50_s", "latency_p99_s", "orchestration_share")
        sys.stdout.write(json_line({
            "label": report["label"],
            "json": str(out) if out else None,
            "runs": [{k: r[k] for k in keys} for r in report["runs"]],
            "reference_vs_ours": report["reference_vs_ours"],
            "stops_paying_at_k": report["stops_paying_at_k"],
        }))


def _read_bench(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"--compare {path}: not a readable lookahead bench report or eval summary.json ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise fail(f"--compare {path}: not a lookahead bench report or eval summary.json (no 'runs' list)")
    return data


def simulate_command(
    profile: Annotated[str, typer.Option("--profile", "-p", help=PROFILE_HELP)] = "paper-qwen3-32b-h100",
    workload: Annotated[str | None, typer.Option(help="A workload of the profile (default: its first).")] = None,
    runs: Annotated[str | None, typer.Option(help=RUNS_HELP)] = None,
    k: Annotated[str, typer.Option("--k", help="Loads to simulate: problems in flight, comma-separated.")] = "1,4,16,64",
    problems: Annotated[int | None, typer.Option(help="Problems per run and K (default: max(8, 2K)).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the scripted problems and drafts.")] = 0,
    acceptance: Annotated[str | None, typer.Option(help="What if: step acceptance per depth instead of the workload's, "
                                                   "comma-separated, e.g. 0.7 or 0.7,0.6.")] = None,
    batcher: Annotated[bool, typer.Option("--batcher/--no-batcher", help="In-process engines (batching: merged) go "
                                          "through the reasoner's real batcher; --no-batcher: the simulator models its merges.")] = True,
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the report here (JSON) and its plot beside it (.png).")] = None,
    compare: Annotated[list[Path] | None, typer.Option(help="A `lookahead bench` report or `lookahead eval` summary.json of the "
                                                       "same runs and problems: simulated vs measured seconds per problem and "
                                                       "speedup, at the K the eval ran with (its --concurrency; a bench: the first "
                                                       "--k). Repeat it for several K, or for several evals at one K: their mean is compared "
                                                       "and their spread reported (real runs under load vary).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Project speedup and throughput of every mode vs load from a cost profile, with the real loop.

    The reasoner, its rounds, the adaptive policy, the verifier plumbing and the scheduler run for
    real over modelled engines: each call takes the time the profile's cost model gives it (decode
    step by rows in the batch, prefill per uncached token, per-call cost, judge per pair) on a
    virtual clock, and drafts match the target's steps with the profile's acceptance per depth.
    Prints, per run and K, tokens/s, the speedup over ar at the same K, p50/p99 latency, the γ the
    rounds used and the orchestration time the loop's Python took per round. Every figure is a
    simulation; the report lists every input with its source.
    """
    from lookahead.simulate import load_profile, simulate, write_report
    from lookahead.simulate.run import compare_measured, pool_benches

    ks = _ks(k)
    what_if = None
    if acceptance is not None:
        try:
            what_if = [float(a) for a in acceptance.split(",") if a.strip()]
        except ValueError:
            raise fail(f"--acceptance must be comma-separated probabilities, e.g. 0.7,0.6 (got {acceptance!r})") from None
        finite_options(**{f"acceptance[{i}]": a for i, a in enumerate(what_if)})
    try:
        chosen = load_profile(profile)
        with err_console.status("simulating...") as status:
            report = simulate(chosen, runs=runs, ks=ks, problems=problems, workload=workload, seed=seed,
                              overrides=list(set_ or []), batcher=batcher, acceptance=what_if,
                              on_run=lambda r: status.update(f"simulated {r['run']} at K={r['k']}"))
        by_k: dict[int, list[dict[str, Any]]] = {}
        for path in compare or []:
            bench = _read_bench(path)
            at = int(bench.get("concurrency") or ks[0])
            if at not in ks:
                raise fail(f"--compare {path}: its runs had {at} problems in flight; add {at} to --k")
            by_k.setdefault(at, []).append(bench)
        for at, benches in by_k.items():
            compare_measured(report, pool_benches(benches) if len(benches) > 1 else benches[0], at)
    except LookaheadError as exc:
        raise fail(str(exc)) from None
    png = None
    if out is not None:
        from lookahead.eval.runner import command_line

        try:
            png = write_report(report, out, command_line())
        except OSError as exc:
            raise fail(f"--out {out}: cannot write the report ({exc})") from None
    _print(report, out, png, as_json)


def profile_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="The profile to write (YAML), for lookahead simulate --profile.")],
    task: TaskOpt = "gsm8k",
    limit: LimitOpt = 3,
    offset: OffsetOpt = 0,
    data_dir: DataDirOpt = None,
    gamma: Annotated[int, typer.Option(help="Lookahead depth of the lr run that measures acceptance per depth.")] = 2,
    batch_sizes: Annotated[str, typer.Option(help="Extra target batch sizes to time, comma-separated.")] = "",
    token_sd: Annotated[bool, typer.Option("--token-sd/--no-token-sd", help="Also run sd and lr+sd to measure token speculation (the target's and the draft's acceptance).")] = False,
    repeats: Annotated[int, typer.Option(help="Timed tries per measurement (the best counts).")] = 2,
    config: ConfigOpt = "default",
    set_: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure a cost profile of your engines (in-process or servers) for `lookahead simulate`.

    Times the target's decode step at the batch sizes the loop uses, its prefill per token and
    per-call cost, the same for the draft, the verifier per call and per pair; then short ar and lr
    runs on --limit problems of --task give the problems' step lengths and the acceptance per
    depth (and with --token-sd sd and lr+sd runs: the token acceptance lengths). Writes --out (YAML), every
    number with its source.
    """
    from lookahead.config import load_config
    from lookahead.eval.harness import apply_task_prompt
    from lookahead.eval.tasks import load_problems, resolve_task
    from lookahead.simulate import save_profile
    from lookahead.simulate.measure import measure_profile

    if gamma < 1 or repeats < 1 or (limit is not None and limit < 1):
        raise fail("--gamma, --repeats and --limit must be >= 1")
    if out.exists() and out.is_dir():
        raise fail(f"--out {out} is a folder; give the YAML file to write, e.g. --out {out / 'profile.yaml'}")
    try:
        sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise fail(f"--batch-sizes must be comma-separated integers (got {batch_sizes!r})") from None
    try:
        cfg = load_config(config, list(set_ or []))
        source = resolve_task(task, data_dir=data_dir)
        cfg = apply_task_prompt(cfg, source)
        questions = [p.question for p in load_problems(source, offset, limit)]
        quiet_libraries(cfg)
        with err_console.status("measuring...") as status:
            profile = measure_profile(cfg, questions, task=task.split(":")[0], gamma=gamma, sizes=sizes, token_sd=token_sd,
                                      repeats=repeats, say=status.update)
        from lookahead.eval.runner import command_line

        save_profile(profile, out, header=f"written by: {command_line()}")
    except LookaheadError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"--out {out}: cannot write the profile ({exc})") from None
    t = profile.target
    console.print(f"target step: {', '.join(f'{n} rows {s * 1e3:.1f} ms' for n, s in t.decode_s.items())}")
    console.print(f"draft step {profile.draft.decode_s[1] * 1e3:.1f} ms (c = {profile.draft.decode_s[1] / t.decode_s[1]:.3f}); "
                  f"judge {profile.judge.call_s * 1e3:.2f} ms + {profile.judge.pair_s * 1e3:.2f} ms per pair")
    load = next(iter(profile.workloads.values()))
    console.print(f"acceptance by depth {load.acceptance}; {len(load.problems)} problems; profile {out}")
    if as_json:
        sys.stdout.write(json_line({"profile": str(out), "decode_s": t.decode_s, "acceptance": load.acceptance}))
