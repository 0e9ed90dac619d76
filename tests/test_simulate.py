"""`lookahead simulate` / `lookahead profile`: the modelled engines' costs and texts, the virtual
clock under concurrency, the profile's checks, the report, the CLI. Virtual time: seconds total."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
import time

import pytest
import typer
import yaml
from typer.testing import CliRunner

from lookahead.cli.simulate import profile_command, simulate_command
from lookahead.errors import ConfigError
from lookahead.simulate import load_profile, profile_names, simulate, write_report
from lookahead.simulate.measure import depth_acceptance, measure_profile
from lookahead.simulate.modelled import Script, World, all_parked
from lookahead.simulate.profile import profile_from_dict
from lookahead.simulate.run import base_config, parse_runs, simulate_run

TOY = {
    "name": "toy",
    "target": {"model": "t", "device": "gpu0", "batching": "continuous", "decode_s": {1: 0.02, 8: 0.022, 64: 0.04},
               "prefill_s_per_token": 0.0001, "call_s": 0.001},
    "draft": {"model": "d", "device": "gpu1", "batching": "continuous", "decode_s": {1: 0.004, 64: 0.008},
              "prefill_s_per_token": 0.00001},
    "judge": {"model": "j", "device": "gpu2", "call_s": 0.01, "pair_s": 0.002},
    "workloads": {"w": {"prompt_tokens": 100, "acceptance": [0.6, 0.5], "steps": 8, "step_tokens": 30,
                        "target_acceptance_length": 1.6}},
    "config": {"gamma": 2},
}


def toy(**changes):
    data = copy.deepcopy(TOY)
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return profile_from_dict(data)


def one_run(profile, spec, k=1, problems=4):
    _, load = profile.workload()
    cfg = base_config(profile, Script(load, problems))
    return simulate_run(profile, load, parse_runs(spec, cfg)[0], k, problems, cfg)


# -- profiles ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["paper-qwen3-32b-h100", "qwen3-8b-1gpu-h100"])
def test_shipped_profiles_name_a_source_for_every_number(name):
    """Issue 23: the shipped profiles carry their sources (no input reported as 'not stated')."""
    profile = load_profile(name)
    for workload in profile.workloads:
        unstated = [i["input"] for i in profile.inputs(workload) if i["source"] == "not stated in the profile"
                    and i["input"].split(".")[-1] not in ("model", "device", "batching", "max_batch_rows", "spread", "problems")]
        assert not unstated, unstated
    assert name in profile_names()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"target__prefill_s_per_token": None}, ["target.prefill_s_per_token is missing", "lookahead profile"]),
        ({"draft__call_s": -0.1}, ["draft.call_s must be >= 0"]),
        ({"target__decode_s": {1: 0.02, 8: 0.01}}, ["target.decode_s decreases", "8 rows"]),
        ({"workloads__w__acceptance": [0.5, 1.2]}, ["acceptance[1]", "[0, 1]"]),
        ({"target__batching": "magic"}, ["target.batching", "continuous"]),
        ({"judge__colour": 3}, ["unknown profile key 'judge.colour'"]),
        ({"target__decode_s": {2: 0.02}}, ["no batch size 1"]),
        ({"target__spec_pass": "fast"}, ["target.spec_pass 'fast'", "compute-bound"]),
        ({"target__join_s": {1: -0.01}}, ["target.join_s[1] must be >= 0"]),
        ({"target__join_s": {"x": 0.01}}, ["target.join_s must map a batch size"]),
    ],
)
def test_bad_profile_is_one_line_naming_the_field(change, words):
    """Bad input: a missing / negative cost, a decreasing curve, acceptance outside [0, 1] -> one line naming the field."""
    with pytest.raises(ConfigError) as err:
        toy(**change)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_verification_pass_models_agree_on_one_row_and_part_under_load():
    """spec_pass: one row's pass costs spec_step_cost x its decode step in both models; over n rows the
    memory-bound pass scales the n-row step, the compute-bound one mixes plain steps and steps as wide
    as n (1 + k) rows, by the share q that one row's cost gives."""
    costs = toy(target__decode_s={1: 0.01, 4: 0.02, 16: 0.06, 64: 0.22}, target__spec_step_cost=1.5,
                target__spec_num_tokens=3).target
    memory = dataclasses.replace(costs, spec_pass="memory-bound")
    compute = dataclasses.replace(costs, spec_pass="compute-bound")
    assert memory.verify_s(1) == pytest.approx(0.015) and compute.verify_s(1) == pytest.approx(0.015)
    q = compute.spec_share()
    assert q == pytest.approx(0.5 * 0.01 / (0.02 - 0.01))  # step_s(4) = 0.02: half of a row's passes propose
    assert memory.verify_s(8) == pytest.approx(1.5 * costs.step_s(8))
    wide = 1 - (1 - q) ** 8
    assert compute.verify_s(8) == pytest.approx(wide * costs.step_s(32) + (1 - wide) * costs.step_s(8))
    assert compute.verify_s(8) > memory.verify_s(8)
    dear = dataclasses.replace(compute, spec_step_cost=4.0)  # more than 1 + k tokens explain: the rest in proportion
    assert dear.spec_share() > 1 and dear.verify_s(2) == pytest.approx(costs.step_s(8) * 0.04 / 0.02)


def test_profile_of_an_in_process_cpu_engine_says_compute_bound():
    from lookahead.config import config_from_dict
    from lookahead.engines.costs import CallTimes
    from lookahead.simulate.measure import _engine_costs

    times = CallTimes({1: 0.01, 2: 0.012}, 0.0001, 0.001)
    cpu = config_from_dict({"target": {"backend": "hf", "device": "cpu"}}).target
    server = config_from_dict({"target": {"backend": "sglang", "url": "http://127.0.0.1:1"}}).target
    assert _engine_costs(times, cpu, "t", "measured", 1, 1.3, True).spec_pass == "compute-bound"
    made = _engine_costs(times, server, "t", "measured", 1, 1.1, True)
    assert made.spec_pass == "memory-bound" and "once per pass" in made.sources["spec_pass"]


# -- the modelled engines ------------------------------------------------------------------------
def test_ar_alone_costs_what_the_cost_model_says():
    """K = 1, ar: each step = (tokens - 1) decode steps + its call's round trip; the prompt is prefilled once."""
    profile = toy()
    fig = one_run(profile, "ar", problems=1)
    steps = Script(profile.workload()[1], 1).steps[0]
    expected = 100 * 0.0001 + sum((len(s) - 1) * 0.02 + 0.001 for s in steps)
    assert fig["makespan_s"] == pytest.approx(expected, rel=1e-6)


def test_merged_device_runs_one_call_at_a_time_and_merges_concurrent_ones():
    """merged (in-process): 4 problems in flight share merged target calls; a call = call_s + prefill + decode steps."""
    profile = toy(target__batching="merged", draft__batching="merged")
    alone = one_run(profile, "ar", k=1, problems=4)
    shared = one_run(profile, "ar", k=4, problems=4)
    assert shared["lanes"]["target"]["mean_rows"] > 2
    assert shared["throughput_tokens_s"] > 2 * alone["throughput_tokens_s"]


def test_merged_engines_through_the_real_batcher_merge_as_modelled():
    """--batcher: the reasoner's batcher (lookahead.engines.batching) merges the in-process calls; ar under load as the world models it."""
    profile = toy(target__batching="merged", draft__batching="merged")
    _, load = profile.workload()
    cfg = base_config(profile, Script(load, 8))
    run = parse_runs("ar", cfg)[0]
    modelled = simulate_run(profile, load, run, 4, 8, cfg, batcher=False)
    real = simulate_run(profile, load, run, 4, 8, cfg, batcher=True)
    assert real["lanes"]["target"]["mean_rows"] > 2.5
    assert real["throughput_tokens_s"] == pytest.approx(modelled["throughput_tokens_s"], rel=0.05)


def test_joined_engines_let_calls_join_a_running_loop_through_the_real_batcher():
    """joined (the HF engine): alone it costs what a merged call costs; under load the batcher joins later calls
    into the running decode loop (generate_requests, pass by pass), which beats merging per call."""
    def run(batching, k, spec="ar"):
        profile = toy(target__batching=batching, draft__batching=batching, target__device="cpu", draft__device="cpu")
        _, load = profile.workload()
        cfg = base_config(profile, Script(load, 8))
        return simulate_run(profile, load, parse_runs(spec, cfg)[0], k, 8, cfg, batcher=True)

    assert run("joined", 1)["makespan_s"] == pytest.approx(run("merged", 1)["makespan_s"], rel=1e-9)
    assert run("joined", 1, "lr")["makespan_s"] == pytest.approx(run("merged", 1, "lr")["makespan_s"], rel=1e-9)
    joined, merged = run("joined", 4), run("merged", 4)
    assert joined["completion_tokens"] == merged["completion_tokens"]
    assert joined["clock_events"] > 10 * merged["clock_events"]  # one clock event per decode pass
    assert joined["throughput_tokens_s"] > 1.1 * merged["throughput_tokens_s"]


def test_a_join_costs_the_loop_its_measured_join_s_and_a_loop_start_costs_call_s():
    """join_s (measured by lookahead profile for the HF engine): what a call joining a running loop costs it,
    by the rows live; a call that starts a loop still costs call_s, so K = 1 (nothing joins) is unchanged."""
    def run(k, join_s):
        profile = toy(target__batching="joined", draft__batching="joined", target__device="cpu", draft__device="cpu",
                      target__join_s=join_s)
        _, load = profile.workload()
        cfg = base_config(profile, Script(load, 4))
        return simulate_run(profile, load, parse_runs("ar", cfg)[0], k, 4, cfg, batcher=True)["makespan_s"]

    assert run(1, {1: 0.5}) == pytest.approx(run(1, {}), rel=1e-9)
    assert run(4, {1: 0.5, 8: 0.5}) > run(4, {}) + 3 * 0.5  # three later problems joined the first one's loop at least
    costs = toy(target__join_s={1: 0.01, 8: 0.08}).target
    assert costs.join_cost(4) == pytest.approx(0.04) and toy().target.join_cost(4) == toy().target.call_s


def test_in_process_prefill_is_padded_to_the_longest_row_and_a_server_sums():
    """HFEngine._prefill feeds every row as long as the longest uncached suffix; a server prefills what each row needs."""
    from lookahead.simulate.modelled import Lane, Row

    rows = [Row(prefill=100, passes=0), Row(prefill=10, passes=0)]
    for batching, tokens in (("joined", 200), ("merged", 200), ("continuous", 110)):
        lane = Lane("target", toy(target__batching=batching).target)
        assert lane.prefill_s(rows) == pytest.approx(tokens * 0.0001)


def test_a_joining_loop_holds_its_device_until_it_ends():
    """One torch thread: a call that arrives while a joining loop runs starts after the loop's last pass,
    and the loop sees it waiting (it then takes no new callers)."""
    from lookahead.simulate.modelled import Device, Lane, Row

    profile = toy(target__batching="joined", draft__batching="joined", target__device="cpu", draft__device="cpu")
    world = World({"cpu": Device("cpu", "joined", 16)})
    target, draft = Lane("target", profile.target), Lane("draft", profile.draft)
    hold, finished, seen = object(), {}, []

    def loop():
        for _ in range(3):
            world.run(target, "cpu", [Row(0, 1)], False, ("target", "joined"), 1.0, hold)
            seen.append(world.others_waiting("cpu", hold))
        world.release("cpu", hold)

    def other():
        time.sleep(0.05)  # real time: the loop's first pass has started
        finished["draft"] = world.run(draft, "cpu", [Row(0, 0)], False, ("draft",)).finish

    with world.running():
        threads = [threading.Thread(target=loop), threading.Thread(target=other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert finished["draft"] >= 3.0  # after the loop's three one-second passes
    assert seen == [True, True, True]


def test_lr_commits_the_ar_text_and_drafts_match_at_the_profile_acceptance():
    """Greedy + exact judge: lr's simulated texts equal ar's; depth-1 acceptance follows the profile's α."""
    profile = toy(workloads__w__acceptance=[0.6], workloads__w__steps=40)
    _, load = profile.workload()
    cfg = base_config(profile, Script(load, 6))
    from lookahead.scheduler import Job, run_many
    from lookahead.simulate.modelled import ModelledEngine, ModelledJudge
    from lookahead.simulate.run import SimulatedReasoner

    texts = {}
    for mode in ("ar", "lr"):
        world = World.from_profile(profile)
        script = Script(load, 6)
        reasoner = SimulatedReasoner(cfg, world, target=ModelledEngine("target", profile.target, world, script),
                                     draft=ModelledEngine("draft", profile.draft, world, script),
                                     verifier=ModelledJudge(profile.judge, world))
        with world.running():
            outcomes = run_many(reasoner, [Job(f"<problem {j}>", mode) for j in range(6)], concurrency=3)
        texts[mode] = [o.result.text for o in outcomes]
        results = [o.result for o in outcomes]
    assert texts["lr"] == texts["ar"]
    alpha, trials = depth_acceptance(results, 2)
    assert trials[0] > 100 and alpha[0] == pytest.approx(0.6, abs=0.1)


def test_the_clock_waits_for_every_thread_and_restores_perf_counter():
    """Virtual time: identical figures on every run (the clock moves only when every thread is parked); time.perf_counter back after."""
    real = time.perf_counter
    profile = toy()
    first = one_run(profile, "lr[pipeline=true]", k=4, problems=6)
    second = one_run(profile, "lr[pipeline=true]", k=4, problems=6)
    assert first["makespan_s"] == second["makespan_s"] and first["clock_forced"] == 0
    assert time.perf_counter is real and all_parked() in (True, False)


def test_a_thread_of_the_host_that_never_parks_does_not_stall_the_clock():
    """A thread that was running before the simulation (a server's event loop in select, a leaked
    test client) is not part of it: the clock never waits STALL_S for it (in CI it made every
    event wait 0.5 s and one test outlive the suite's time limit)."""
    stop = threading.Event()
    busy = threading.Thread(target=lambda: [time.sleep(0.001) for _ in iter(stop.is_set, True)], daemon=True)
    busy.start()
    try:
        alone = one_run(toy(), "lr", k=2, problems=3)
        assert alone["clock_forced"] == 0
    finally:
        stop.set()
        busy.join()


def test_speedup_follows_acceptance_and_adaptive_falls_back_to_ar():
    """α = 1 with a cheap draft: lr well above ar; α = 0: fixed-γ lr below ar, adaptive γ near ar (it stops drafting)."""
    good = simulate(toy(workloads__w__acceptance=[1.0], draft__decode_s={1: 0.001}), runs="ar,lr", ks=[1], problems=3)
    assert next(r for r in good["runs"] if r["run"] == "lr")["speedup"] > 1.5
    bad = simulate(toy(workloads__w__acceptance=[0.0], workloads__w__steps=40), runs="ar,lr,lr[adaptive_gamma=true]",
                   ks=[1], problems=3)
    speed = {r["run"]: r["speedup"] for r in bad["runs"]}
    assert speed["lr"] < 0.95 and speed["lr[adaptive_gamma=true]"] > 0.9
    assert bad["stops_paying_at_k"]["lr"] == 1


def test_report_is_labelled_with_inputs_sources_and_a_plot(tmp_path):
    """JSON + PNG: labelled SIMULATION, every input with its source, orchestration per round measured, ours vs the reference."""
    profile = toy(reference_run="lr", our_runs=["lr[gamma=1]"])
    report = simulate(profile, runs="ar,lr,lr[gamma=1],sd,lr+sd", ks=[1, 2], problems=2)
    png = write_report(report, tmp_path / "sim.json", command="lookahead simulate ...")
    data = json.loads((tmp_path / "sim.json").read_text())
    assert data["label"].startswith("SIMULATION") and data["command"] == "lookahead simulate ..."
    assert png.is_file() and png.stat().st_size > 1000
    assert {i["input"] for i in data["inputs"]} >= {"target.decode_s", "judge.pair_s", "workloads.w.acceptance"}
    assert all(r["orchestration_s_per_round"] > 0 for r in data["runs"])
    assert [row["k"] for row in data["reference_vs_ours"]] == [1, 2]
    assert next(r for r in data["runs"] if r["run"] == "sd" and r["k"] == 1)["speedup"] > 1.2


def test_runs_that_change_the_modelled_parts_are_refused():
    """A run cannot override the engines or the verifier (the profile models them): one line with the fix."""
    profile = toy()
    cfg = base_config(profile, Script(profile.workload()[1], 2))
    with pytest.raises(ConfigError, match="edit the profile"):
        parse_runs("lr[verifier=numeric]", cfg)
    with pytest.raises(ConfigError, match="mode 'turbo' is unknown"):
        parse_runs("turbo", cfg)


# -- lookahead profile ---------------------------------------------------------------------------
def test_profile_measured_on_fake_engines_is_read_by_simulate(tmp_path):
    """lookahead profile in process (scripted engines, a per-token delay): a checked profile simulate replays."""
    from lookahead.config import config_from_dict
    from lookahead.engines.fake import DEFAULT_SCRIPT, FakeEngine
    from lookahead.simulate import save_profile

    target, draft = FakeEngine(DEFAULT_SCRIPT), FakeEngine(DEFAULT_SCRIPT, name="fake-draft")
    target.delay_per_token, draft.delay_per_token = 0.0004, 0.0001  # seconds per token and row: costs to measure
    cfg = config_from_dict({"target": {"backend": "fake"}, "draft": {"backend": "fake"}, "max_step_tokens": 64})
    profile = measure_profile(cfg, ["q1", "q2"], task="toy", gamma=2, repeats=1, sizes=[4],
                              engines={"target": target, "draft": draft})
    assert profile.workloads["toy"].acceptance == [1.0, 1.0]  # the fake draft writes the target's script
    assert len(profile.workloads["toy"].problems) == 2 and sorted(profile.target.decode_s) == [1, 2, 3, 4]
    save_profile(profile, tmp_path / "p.yaml", header="test")
    again = load_profile(tmp_path / "p.yaml")
    report = simulate(again, runs="ar,lr", ks=[1], problems=2)
    assert {r["run"] for r in report["runs"]} == {"ar", "lr"}


def test_token_sd_profile_measures_the_drafts_own_acceptance_length_in_an_lr_sd_run():
    """--token-sd: the sd run gives the target's token acceptance length, an lr+sd run the draft's own
    (a copying draft accepts more than the target; it used to be assumed equal)."""
    from lookahead.config import config_from_dict
    from lookahead.engines.fake import DEFAULT_SCRIPT, FakeEngine

    target, draft = FakeEngine(DEFAULT_SCRIPT), FakeEngine(DEFAULT_SCRIPT, name="fake-draft")
    target.spec_accept_per_pass, draft.spec_accept_per_pass = 1, 3  # tokens accepted per verification pass
    cfg = config_from_dict({"target": {"backend": "fake"}, "draft": {"backend": "fake"}, "max_step_tokens": 64})
    profile = measure_profile(cfg, ["q1", "q2"], task="toy", gamma=2, repeats=1, sizes=[2], token_sd=True,
                              engines={"target": target, "draft": draft})
    load = profile.workloads["toy"]
    assert load.target_acceptance_length < load.draft_acceptance_length <= 4.0
    assert "lr+sd run" in load.sources["draft_acceptance_length"]
    assert True in draft.speculate_calls  # the draft speculated: the lr+sd run


def test_profile_of_servers_names_each_server_a_continuous_device(tmp_path):
    """lookahead profile over (mock) SGLang and OpenAI-compatible servers: each server is its own continuous device."""
    from lookahead.config import config_from_dict

    from mock_servers import MockServer
    from tiny import train_tokenizer

    tok = train_tokenizer(300)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}\n{% endfor %}{{ '<assistant>\\n' }}"
    tok.save_pretrained(str(tmp_path / "tok"))
    steps = ["A1.\n\n", "A2 is longer.\n\n", "A3.\n\n", "Answer \\boxed{4}."]
    with MockServer(steps) as target_srv, MockServer(steps) as draft_srv:
        engine = {"model": "mock-model", "options": {"tokenizer": str(tmp_path / "tok"), "retry_backoff_s": 0.01}}
        cfg = config_from_dict({
            "max_step_tokens": 64, "max_total_tokens": 400,
            "target": {"backend": "sglang", "url": target_srv.url, **engine},
            "draft": {"backend": "openai", "url": draft_srv.url, **engine},
        })
        profile = measure_profile(cfg, ["q"], task="mock", gamma=2, repeats=1)
        urls = (target_srv.url, draft_srv.url)
    assert profile.target.batching == profile.draft.batching == "continuous"
    assert (profile.target.device, profile.draft.device) == urls
    load = profile.workloads["mock"]
    assert load.acceptance[0] == 1.0 and len(load.problems) == 1 and len(load.problems[0]) == 4  # the script's 4 steps


# -- the CLI -------------------------------------------------------------------------------------
def cli(*args):
    app = typer.Typer()
    app.command("simulate")(simulate_command)
    app.command("profile")(profile_command)
    return CliRunner().invoke(app, list(args))


def test_cli_simulate_prints_a_table_and_a_json_line(tmp_path):
    """lookahead simulate --json: the table, the reference comparison, one JSON line last."""
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY))
    result = cli("simulate", "--profile", str(path), "--runs", "ar,lr", "--k", "1", "--problems", "2",
                 "--out", str(tmp_path / "r.json"), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert payload["label"].startswith("SIMULATION") and (tmp_path / "r.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "warp"], "mode 'warp' is unknown"),
        (["--k", "0"], "--k must list loads >= 1"),
        (["--profile", "no-such-profile"], "neither a file nor a shipped profile"),
        (["--workload", "moon"], "workload 'moon' is not in profile"),
        (["--acceptance", "1.5"], "--acceptance[0] must be a probability in [0, 1]"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, message, tmp_path):
    """Bad input: one line naming the fix, exit 2, no traceback."""
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY))
    base = ["simulate", "--profile", str(path), "--k", "1", "--problems", "1"]
    if "--profile" in args:
        base = ["simulate", "--k", "1"]
    result = cli(*base, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_cli_compare_at_a_k_not_simulated_exits_2(tmp_path):
    """--compare with an eval of 8 problems in flight, but --k 1: one line naming the fix."""
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(TOY))
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"concurrency": 8, "runs": [{"label": "ar", "mean_wall_time_s": 1.0, "speedup": 1.0}]}))
    result = cli("simulate", "--profile", str(path), "--runs", "ar", "--k", "1", "--problems", "1", "--compare", str(summary))
    assert result.exit_code == 2 and "add 8 to --k" in result.output and "Traceback" not in result.output


def test_cli_bad_profile_file_exits_2(tmp_path):
    """A profile with acceptance outside [0, 1]: one line naming the field, exit 2."""
    data = copy.deepcopy(TOY)
    data["workloads"]["w"]["acceptance"] = [1.5]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = cli("simulate", "--profile", str(path), "--k", "1")
    assert result.exit_code == 2 and "workloads.w.acceptance[0]" in result.output


def test_compare_measured_puts_the_bench_next_to_the_simulation():
    """--compare: per run, simulated vs measured seconds per problem and speedup, error = simulated / measured - 1."""
    from lookahead.simulate.run import compare_measured

    report = simulate(toy(), runs="ar,lr", ks=[1], problems=2)
    sim = {r["run"]: r for r in report["runs"]}
    bench = {"command": "lookahead bench ...", "runs": [
        {"label": "ar", "mean_wall_time_s": sim["ar"]["latency_mean_s"] * 2, "speedup": 1.0},
        {"label": "lr", "mean_wall_time_s": sim["lr"]["latency_mean_s"], "speedup": sim["lr"]["speedup"]},
    ]}
    rows = {r["run"]: r for r in compare_measured(report, bench)}
    assert rows["ar"]["error"] == pytest.approx(-0.5, abs=1e-3) and rows["lr"]["error"] == pytest.approx(0.0, abs=1e-3)
    assert report["measured"]["max_abs_error"] == pytest.approx(0.5, abs=1e-3)
    assert rows["lr"]["speedup_error"] == pytest.approx(0.0, abs=1e-3)  # at K = 1 latency and tokens/s ratios agree


def test_compare_under_load_matches_the_evals_k_and_its_latency_speedup():
    """An eval summary at --concurrency 4 is compared with the simulation at K = 4; its speedup (summed wall
    times) is set against the simulated mean-latency ratio, and the rows of several files accumulate."""
    from lookahead.simulate.run import compare_measured

    report = simulate(toy(), runs="ar,lr", ks=[1, 4], problems=8)
    sim = {(r["run"], r["k"]): r for r in report["runs"]}
    latency_ratio = sim[("ar", 4)]["latency_mean_s"] / sim[("lr", 4)]["latency_mean_s"]
    eval_k4 = {"concurrency": 4, "runs": [
        {"label": "ar", "mean_wall_time_s": sim[("ar", 4)]["latency_mean_s"], "speedup": 1.0},
        {"label": "lr", "mean_wall_time_s": sim[("lr", 4)]["latency_mean_s"], "speedup": latency_ratio * 1.1},
    ]}
    compare_measured(report, {"runs": [{"label": "ar", "mean_wall_time_s": 1.0, "speedup": 1.0}]})
    rows = {r["run"]: r for r in compare_measured(report, eval_k4)}
    assert rows["lr"]["k"] == 4 and rows["lr"]["error"] == pytest.approx(0.0, abs=1e-3)
    assert rows["lr"]["speedup_error"] == pytest.approx(1 / 1.1 - 1, abs=1e-3)
    assert [(r["run"], r["k"]) for r in report["measured"]["runs"]] == [("ar", 1), ("ar", 4), ("lr", 4)]
    assert [b["k"] for b in report["measured"]["benches"]] == [1, 4]


def test_several_evals_at_one_k_are_compared_by_their_mean_with_their_spread(tmp_path):
    """Real runs under load vary: --compare given several evals at one K compares their mean seconds and
    pooled speedup (mean ar over mean run), and reports the spread of each."""
    from lookahead.simulate.run import pool_benches

    def eval_at(ar_s, lr_s, lr_speedup):
        return {"concurrency": 4, "command": "c", "runs": [{"label": "ar", "mean_wall_time_s": ar_s, "speedup": 1.0},
                                                        {"label": "lr", "mean_wall_time_s": lr_s, "speedup": lr_speedup}]}

    pooled = pool_benches([eval_at(10.0, 20.0, 0.5), eval_at(12.0, 16.0, 0.75)])
    lr = {r["label"]: r for r in pooled["runs"]}["lr"]
    assert lr["mean_wall_time_s"] == 18.0 and lr["speedup"] == pytest.approx(11.0 / 18.0)
    assert lr["mean_wall_time_s_range"] == [16.0, 20.0] and lr["speedup_range"] == [0.5, 0.75] and lr["evals"] == 2
    files = []
    for i, e in enumerate((eval_at(10.0, 20.0, 0.5), eval_at(12.0, 16.0, 0.75))):
        files += ["--compare", str(tmp_path / f"e{i}.json")]
        (tmp_path / f"e{i}.json").write_text(json.dumps(e), encoding="utf-8")
    toy_file = tmp_path / "toy.yaml"
    toy_file.write_text(yaml.safe_dump(TOY))
    result = cli("simulate", "--profile", str(toy_file), "--runs", "ar,lr", "--k", "4", "--problems", "4", *files,
                 "--out", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    rows = {r["run"]: r for r in json.loads((tmp_path / "r.json").read_text())["measured"]["runs"]}
    assert rows["lr"]["measured_s"] == 18.0 and rows["lr"]["evals"] == 2 and rows["lr"]["speedup_range"] == [0.5, 0.75]


def test_what_if_acceptance_replaces_the_workloads_and_says_so():
    """--acceptance: the simulated acceptance and its source in the report are the what-if value."""
    report = simulate(toy(), runs="ar,lr", ks=[1], problems=2, acceptance=[1.0])
    source = next(i for i in report["inputs"] if i["input"] == "workloads.w.acceptance")
    assert source["value"] == [1.0] and source["source"].startswith("what-if")


def test_incomplete_drafts_cost_the_tokens_they_run():
    """draft_incomplete_tokens: an incomplete draft step ends after that many tokens instead of at the step cap."""
    capped = one_run(toy(workloads__w__draft_complete=0.0), "lr", problems=2)
    short = one_run(toy(workloads__w__draft_complete=0.0, workloads__w__draft_incomplete_tokens=3), "lr", problems=2)
    assert short["makespan_s"] < capped["makespan_s"]
    assert short["lanes"]["draft"]["busy_share"] < capped["lanes"]["draft"]["busy_share"]


def test_the_decode_curve_is_timed_at_the_context_asked_for():
    """measure_engine(context_words=N): the timed rows share an N-word prompt (a decode step's cost grows with the context)."""
    from lookahead.engines.costs import measure_engine

    class Recording:
        name = "recording"

        def __init__(self):
            self.prompts: list[str] = []

        def generate(self, prompts, params, stop=()):
            from lookahead.types import Completion

            self.prompts += list(prompts)
            n = params.max_new_tokens
            time.sleep(0.0005 * n)
            return [Completion("x" * n, len(p.split()), n, "length") for p in prompts]

        def count_tokens(self, text):
            return len(text.split())

    for words in (40, 200):
        engine = Recording()
        measure_engine(engine, [1, 2], repeats=1, context_words=words)
        timed = [p for p in engine.prompts if ":" in p]  # the curve's rows: base, index, 4 words
        assert timed and all(len(p.split()) == words + 5 for p in timed)
