"""Bounded load test of `lookahead serve`: latency percentiles, throughput and 429s per mode and concurrency.

Starts ``lookahead serve`` itself on 127.0.0.1 (a free port; config and ``--set`` passed through),
waits for ``/health``, then for each mode (``--modes``, sent as the request's ``mode`` field) and
each concurrency (``--concurrency``) runs that many closed-loop clients until ``--requests``
chat completions were sent, and finally stops the server (SIGINT: graceful). Nothing but
127.0.0.1 is ever contacted.

The whole run is bounded by ``--max-seconds`` (server start included): each (mode, concurrency)
cell gets an equal share of the time left, requests not started within it are counted as
``skipped``, and requests still running at the hard limit are cut off (counted as errors).

Reported per cell: p50/p95/p99 latency of the 200 answers, requests/s and completion tokens/s
(200 answers over the cell's wall time), the counts of 200, 429 (expected once more than the
server's ``--max-concurrency`` running plus ``--max-queue`` waiting requests arrive together:
reported apart) and other errors (unexpected), the server's peak resident memory during the cell
(sampled from /proc every 0.1 s), its batcher and prefix-cache figures after the cell (/health),
and ``mismatches``: 200 answers whose text differs from the same question's answer in the mode's
FIRST cell (run the smallest concurrency first, 1 = each request alone: with greedy decoding the
text must not depend on the load). Writes ``OUT.json`` (the exact command at the top) and
``OUT.png``; ``--speedup-of ar`` adds each cell's throughput relative to that mode's at the same
concurrency, and each cell's throughput relative to its mode's first cell.

Example:
    .venv/bin/python scripts/load_test.py --config tiny --max-seconds 60 --out /tmp/load-tiny   # fake engines
    .venv/bin/python scripts/load_test.py --requests 32 --concurrency 1,8,32 --modes ar,lr --max-seconds 1800
    .venv/bin/python scripts/load_test.py --plot-only --out docs/benchmarks/server
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


@dataclass
class Outcome:
    """One request's outcome, as the client saw it."""

    status: int  # HTTP status; 0 = no response (connection error, cut off at the hard limit)
    latency_s: float  # seconds from sending to the whole answer read
    completion_tokens: int = 0  # usage.completion_tokens of a 200 answer
    question: int = -1  # index of the question asked
    text: str | None = None  # the answer's text (200)
    queue_s: float = 0.0  # lookahead.queue_s of a 200: seconds waiting for the reasoner
    service_s: float = 0.0  # lookahead.wall_time_s of a 200: seconds generating
    acceptance_rate: float | None = None  # lookahead.acceptance_rate of a 200 (lr only)
    error: str | None = None  # error message of a non-200 answer


@dataclass
class Cell:
    """Everything measured at one (mode, concurrency)."""

    mode: str  # "ar" or "lr" (the request's `mode` field)
    concurrency: int  # closed-loop clients sending at once
    requests: int  # requests the cell was asked to send
    ok: int = 0  # 200 answers
    rejected_429: int = 0  # 429 answers (overload: more than --server-max-concurrency at once)
    errors: int = 0  # any other status or no answer (unexpected)
    skipped: int = 0  # not sent: the cell's share of --max-seconds ran out
    wall_s: float = 0.0  # seconds from the first request sent to the last answer read
    p50_s: float | None = None  # latency percentiles of the 200 answers (seconds)
    p95_s: float | None = None
    p99_s: float | None = None
    mean_s: float | None = None
    rejected_p50_s: float | None = None  # median latency of the 429 answers (seconds)
    requests_per_s: float = 0.0  # 200 answers per second of wall time
    completion_tokens_per_s: float = 0.0  # completion tokens of the 200 answers per second
    mean_queue_s: float | None = None  # server side: mean seconds waiting for the reasoner
    mean_service_s: float | None = None  # server side: mean seconds generating
    acceptance_rate: float | None = None  # mean step acceptance of the 200 answers (lr)
    mismatches: int = 0  # 200 answers whose text differs from the same question's in the mode's first cell
    peak_rss_mb: float | None = None  # the server's peak resident memory during the cell (MiB)
    server: dict[str, Any] = field(default_factory=dict)  # /health after the cell: batches and caches
    statuses: dict[str, int] = field(default_factory=dict)  # every status seen ("0" = no answer)
    error_samples: list[str] = field(default_factory=list)  # up to 3 distinct unexpected errors


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), like numpy's default; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`lookahead serve` as a subprocess on 127.0.0.1, its output in a log file."""

    def __init__(self, command: list[str], port: int, api_key: str | None) -> None:
        self.command = command  # the serve command line
        self.port = port  # TCP port on 127.0.0.1
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="lookahead-serve-", suffix=".log", delete=False)  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def request(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except json.JSONDecodeError:
                return response.status, raw.decode(errors="replace")
        finally:
            conn.close()

    def wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if self.request("GET", "/health", None, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"the server did not answer /health before --max-seconds ran out:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def rss_mb(self) -> float | None:
        """The server's resident memory now (MiB), or None off Linux / once it has exited."""
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> int | None:
        """SIGINT (uvicorn's graceful shutdown), then SIGKILL if it hangs; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


def one_request(server: Server, body: dict[str, Any], hard_deadline: float) -> Outcome:
    start = time.monotonic()
    try:
        status, payload = server.request("POST", "/v1/chat/completions", body, timeout=max(hard_deadline - start, 0.1))
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, or cut off at the hard limit
        return Outcome(0, time.monotonic() - start, error=f"{type(exc).__name__}: {exc}")
    latency = time.monotonic() - start
    if status != 200:
        message = payload.get("error", {}).get("message") if isinstance(payload, dict) else str(payload)[:200]
        return Outcome(status, latency, error=f"{status}: {message}")
    stats = payload.get("lookahead", {})
    return Outcome(
        200,
        latency,
        text=payload["choices"][0]["message"]["content"],
        completion_tokens=int(payload["usage"]["completion_tokens"]),
        queue_s=float(stats.get("queue_s", 0.0)),
        service_s=float(stats.get("wall_time_s", 0.0)),
        acceptance_rate=stats.get("acceptance_rate") if stats.get("mode") == "lr" else None,
    )


def run_cell(
    server: Server, mode: str, concurrency: int, requests: int, questions: list[str], extra: dict[str, Any],
    cell_deadline: float, hard_deadline: float,
) -> Cell:
    """`concurrency` closed-loop clients share `requests` requests; none starts after `cell_deadline`."""
    lock = threading.Lock()
    next_index = 0
    outcomes: list[Outcome] = []
    skipped = 0

    def client() -> None:
        nonlocal next_index, skipped
        while True:
            with lock:
                if next_index >= requests:
                    return
                index = next_index
                next_index += 1
                if time.monotonic() >= cell_deadline:
                    skipped += 1
                    continue
            body = {
                "messages": [{"role": "user", "content": questions[index % len(questions)]}],
                "mode": mode,
                **extra,
            }
            outcome = one_request(server, body, hard_deadline)
            outcome.question = index % len(questions)
            with lock:
                outcomes.append(outcome)

    before = batcher_counters(server)
    peak: list[float] = []
    sampling = threading.Event()

    def sample_memory() -> None:
        while not sampling.wait(0.1):
            rss = server.rss_mb()
            if rss is not None:
                peak.append(rss)

    start = time.monotonic()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(hard_deadline - time.monotonic(), 0) + 5)
    sampling.set()
    sampler.join()
    cell = summarize_cell(mode, concurrency, requests, outcomes, skipped, time.monotonic() - start)
    cell.peak_rss_mb = round(max(peak), 1) if peak else None
    cell.outcomes = outcomes  # type: ignore[attr-defined] -- for the text comparison, not written out
    try:
        health = server.request("GET", "/health", None, timeout=5)[1]
        cell.server = {k: health[k] for k in ("batches", "caches") if isinstance(health, dict) and k in health}
    except (OSError, http.client.HTTPException):
        pass
    after = cell.server.get("batches", {})
    if before and after:  # this cell's share of the server's counters
        delta = {k: round(after[k] - before[k], 3) for k in ("calls", "rows", "merged_calls", "joined_calls", "queue_wait_s",
                                                              "busy_s", "row_tokens", "slot_tokens", "passes")
                 if k in after and k in before}
        if delta.get("calls"):
            delta["mean_rows"] = round(delta["rows"] / delta["calls"], 3)
        if delta.get("slot_tokens"):
            delta["fill"] = round(delta["row_tokens"] / delta["slot_tokens"], 3)
        if delta.get("passes"):  # rows decoding together per forward pass (joined rows included)
            delta["live_rows"] = round(delta["row_tokens"] / delta["passes"], 3)
        cell.server["cell_batches"] = delta
    return cell


def batcher_counters(server: Server) -> dict[str, Any]:
    """The server's batcher counters now (/health), or {} when it reports none."""
    try:
        health = server.request("GET", "/health", None, timeout=5)[1]
    except (OSError, http.client.HTTPException):
        return {}
    return health.get("batches", {}) if isinstance(health, dict) else {}


def summarize_cell(mode: str, concurrency: int, requests: int, outcomes: list[Outcome], skipped: int, wall: float) -> Cell:
    """The figures of one (mode, concurrency) cell from its outcomes; ``wall`` in seconds."""
    ok = [o for o in outcomes if o.status == 200]
    rejected = [o for o in outcomes if o.status == 429]
    others = [o for o in outcomes if o.status not in (200, 429)]
    latencies = [o.latency_s for o in ok]
    tokens = sum(o.completion_tokens for o in ok)
    rates = [o.acceptance_rate for o in ok if o.acceptance_rate is not None]
    samples: list[str] = []
    for o in others:
        if o.error and o.error not in samples and len(samples) < 3:
            samples.append(o.error)

    def r(value: float | None, digits: int = 4) -> float | None:
        return None if value is None else round(value, digits)

    return Cell(
        mode=mode,
        concurrency=concurrency,
        requests=requests,
        ok=len(ok),
        rejected_429=len(rejected),
        errors=len(others) + (requests - len(outcomes) - skipped),  # threads cut off at the hard limit
        skipped=skipped,
        wall_s=round(wall, 3),
        p50_s=r(percentile(latencies, 50)),
        p95_s=r(percentile(latencies, 95)),
        p99_s=r(percentile(latencies, 99)),
        mean_s=r(sum(latencies) / len(latencies)) if latencies else None,
        rejected_p50_s=r(percentile([o.latency_s for o in rejected], 50)),
        requests_per_s=round(len(ok) / wall, 3) if wall > 0 else 0.0,
        completion_tokens_per_s=round(tokens / wall, 2) if wall > 0 else 0.0,
        mean_queue_s=r(sum(o.queue_s for o in ok) / len(ok)) if ok else None,
        mean_service_s=r(sum(o.service_s for o in ok) / len(ok)) if ok else None,
        acceptance_rate=r(sum(rates) / len(rates)) if rates else None,
        statuses={str(k): v for k, v in sorted(Counter(o.status for o in outcomes).items())},
        error_samples=samples,
    )


def parse_list(text: str, kind: type, name: str) -> list[Any]:
    try:
        values = [kind(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"{name} must be a comma-separated list, e.g. {'1,8,32' if kind is int else 'ar,lr'}") from None
    if not values:
        raise SystemExit(f"{name} is empty")
    return values


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default", help="preset name or YAML file, passed to lookahead serve")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value (passed on)")
    parser.add_argument("--requests", type=int, default=32, help="requests per (mode, concurrency)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--modes", default="ar,lr", help="comma-separated modes, sent as the request's `mode`")
    parser.add_argument("--max-seconds", type=float, default=1800, help="hard limit on the whole run, server start included")
    parser.add_argument("--max-tokens", type=int, default=None, help="max_tokens of each request (default: the config's)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="the question every request asks")
    parser.add_argument("--gsm8k", type=int, default=0, help="cycle through the first N GSM8K test questions instead")
    parser.add_argument("--data-dir", default=None, help="folder with gsm8k/test.jsonl (default ../shared/data)")
    parser.add_argument("--server-max-concurrency", type=int, default=8, help="lookahead serve --max-concurrency")
    parser.add_argument("--server-max-queue", type=int, default=None, help="lookahead serve --max-queue (default: its own)")
    parser.add_argument("--speedup-of", default=None, help="a mode: report every cell's throughput relative to it")
    parser.add_argument("--server-timeout", type=float, default=None, help="lookahead serve --timeout (default: its own)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured requests per mode before measuring")
    parser.add_argument("--out", default="docs/benchmarks/server", help="output path without extension (.json, .png)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the existing JSON")
    return parser.parse_args()


def serve_command(args: argparse.Namespace, port: int) -> list[str]:
    """The ``lookahead serve`` command line of the server under test."""
    command = [sys.executable, "-m", "lookahead.cli", "serve", "--config", args.config]
    for item in args.overrides:
        command += ["--set", item]
    command += ["--host", "127.0.0.1", "--port", str(port), "--max-concurrency", str(args.server_max_concurrency)]
    if args.server_max_queue is not None:
        command += ["--max-queue", str(args.server_max_queue)]
    if args.server_timeout is not None:
        command += ["--timeout", str(args.server_timeout)]
    return command + ["--log-level", "warning"]


def measure(server: Server, args: argparse.Namespace, plan: list[tuple[str, int]], questions: list[str],
            extra: dict[str, Any], hard_deadline: float) -> list[Cell]:
    """Warm every mode up, then run the cells of ``plan`` one after another, each with its share of the time left."""
    for mode in dict.fromkeys(mode for mode, _ in plan):
        for _ in range(args.warmup):  # first-call costs (a lazily loaded draft, caches) out of the timings
            body = {"messages": [{"role": "user", "content": questions[0]}], "mode": mode, **extra}
            warm = one_request(server, body, hard_deadline)
            if warm.status != 200:
                raise SystemExit(f"warm-up request in mode {mode} failed: {warm.error}\n{server.log_tail()}")
    cells: list[Cell] = []
    alone: dict[str, dict[int, str]] = {}  # mode -> question -> text in the mode's first cell
    for i, (mode, concurrency) in enumerate(plan):
        now = time.monotonic()
        cell_deadline = now + max(hard_deadline - now, 0) / (len(plan) - i)
        cell = run_cell(server, mode, concurrency, args.requests, questions, extra, cell_deadline, hard_deadline)
        texts = {o.question: o.text for o in cell.outcomes if o.status == 200}  # type: ignore[attr-defined]
        reference = alone.setdefault(mode, texts)
        cell.mismatches = sum(1 for q, text in texts.items() if q in reference and reference[q] != text)
        cells.append(cell)
        print(
            f"{mode:>3} c={concurrency:<3} 200={cell.ok:<3} 429={cell.rejected_429:<3} err={cell.errors:<3} "
            f"skipped={cell.skipped:<3} p50={fmt(cell.p50_s)} p95={fmt(cell.p95_s)} p99={fmt(cell.p99_s)} "
            f"{cell.requests_per_s:.2f} req/s {cell.completion_tokens_per_s:.1f} tok/s "
            f"mismatches={cell.mismatches} rss={cell.peak_rss_mb} MiB",
            file=sys.stderr,
        )
    return cells


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".png"))
        return
    started = time.monotonic()
    hard_deadline = started + args.max_seconds
    concurrencies = parse_list(args.concurrency, int, "--concurrency")
    modes = parse_list(args.modes, str, "--modes")
    if args.requests < 1 or min(concurrencies) < 1 or args.max_seconds <= 0:
        raise SystemExit("--requests, each --concurrency and --max-seconds must be positive")
    questions = [args.question]
    if args.gsm8k:
        from lookahead.eval.tasks import load_example

        questions = [load_example("gsm8k", i, args.data_dir).question for i in range(args.gsm8k)]
    extra: dict[str, Any] = {} if args.max_tokens is None else {"max_tokens": args.max_tokens}

    port = free_port()
    command = serve_command(args, port)
    server = Server(command, port, os.environ.get("LOOKAHEAD_API_KEY"))
    cells: list[Cell] = []
    model = None
    try:
        server.wait_healthy(hard_deadline)
        startup_s = time.monotonic() - started
        model = server.request("GET", "/health", None, timeout=5)[1].get("model")
        print(f"server up in {startup_s:.1f} s on 127.0.0.1:{port} (model {model})", file=sys.stderr)
        cells = measure(server, args, [(mode, c) for mode in modes for c in concurrencies], questions, extra, hard_deadline)
    finally:
        server_rc = server.stop()
    report = {
        "command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
        "server_command": " ".join(shlex.quote(a) for a in ["python", *command[1:]]),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs",
        "model": model,
        "settings": {
            "requests": args.requests,
            "concurrency": concurrencies,
            "modes": modes,
            "max_seconds": args.max_seconds,
            "max_tokens": args.max_tokens,
            "questions": len(questions),
            "server_max_concurrency": args.server_max_concurrency,
            "server_max_queue": args.server_max_queue,
            "warmup": args.warmup,
        },
        "total_s": round(time.monotonic() - started, 2),
        "hit_max_seconds": any(c.skipped for c in cells) or time.monotonic() >= hard_deadline,
        "server_exit_code": server_rc,
        "cells": [asdict(c) for c in cells],
        "ratios": ratios(cells, args.speedup_of),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}", file=sys.stderr)


def ratios(cells: list[Cell], baseline: str | None) -> list[dict[str, Any]]:
    """Per cell: tokens/s over its mode's first cell (scaling), and over ``baseline``'s cell at the
    same concurrency (speedup), where those exist."""
    first: dict[str, float] = {}
    base = {c.concurrency: c.completion_tokens_per_s for c in cells if c.mode == baseline}
    out = []
    for c in cells:
        first.setdefault(c.mode, c.completion_tokens_per_s)
        row: dict[str, Any] = {"mode": c.mode, "concurrency": c.concurrency}
        if first[c.mode] > 0:
            row["over_first_cell"] = round(c.completion_tokens_per_s / first[c.mode], 3)
        if base.get(c.concurrency):
            row[f"over_{baseline}"] = round(c.completion_tokens_per_s / base[c.concurrency], 3)
        out.append(row)
    return out


def fmt(seconds: float | None) -> str:
    return "   -   " if seconds is None else f"{seconds:6.3f}s"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["cells"]
    modes = list(dict.fromkeys(c["mode"] for c in cells))
    fig, (lat, thr, counts) = plt.subplots(1, 3, figsize=(15, 4.2))
    for mode in modes:
        rows = [c for c in cells if c["mode"] == mode]
        xs = [c["concurrency"] for c in rows]
        line = lat.plot(xs, [c["p50_s"] for c in rows], "o-", label=f"{mode} p50")[0]
        lat.plot(xs, [c["p95_s"] for c in rows], "s--", color=line.get_color(), label=f"{mode} p95")
        thr.plot(xs, [c["completion_tokens_per_s"] for c in rows], "o-", color=line.get_color(), label=mode)
    concurrencies = sorted({c["concurrency"] for c in cells})
    for axis in (lat, thr):
        axis.set_xscale("log", base=2)
        axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axis.set_xlabel("concurrent clients")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8)
    lat.set_ylabel("latency of 200 answers (s)")
    lat.set_title("latency", fontsize=9)
    thr.set_ylabel("completion tokens / s")
    thr.set_title("throughput (200 answers)", fontsize=9)
    labels = [f"{c['mode']} c={c['concurrency']}" for c in cells]
    xs = range(len(cells))
    ok = [c["ok"] for c in cells]
    rejected = [c["rejected_429"] for c in cells]
    errors = [c["errors"] for c in cells]
    skipped = [c["skipped"] for c in cells]
    counts.bar(xs, ok, label="200", color="tab:green")
    counts.bar(xs, rejected, bottom=ok, label="429 (overload)", color="tab:orange")
    counts.bar(xs, errors, bottom=[a + b for a, b in zip(ok, rejected, strict=True)], label="other errors", color="tab:red")
    below = [a + b + e for a, b, e in zip(ok, rejected, errors, strict=True)]
    counts.bar(xs, skipped, bottom=below, label="skipped (time)", color="lightgrey")
    counts.set_xticks(list(xs), labels, rotation=45, ha="right", fontsize=8)
    counts.set_ylabel("requests")
    counts.set_title(f"outcomes (server --max-concurrency {report['settings']['server_max_concurrency']})", fontsize=9)
    counts.set_ylim(0, max((c["requests"] for c in cells), default=1) * 1.4)
    counts.legend(fontsize=8, ncol=2, loc="upper right")
    fig.suptitle(f"lookahead serve load test: {report['model']} · {report['machine']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
