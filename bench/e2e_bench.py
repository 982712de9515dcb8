"""End-to-end benchmarks against the emulator counting as the providers do; writes the
"## End to end" section of docs/benchmarks.md and its plots (docs/img/e2e_*.png).

(1) TPM-bound: two tenants, 400 chats with output caps of 20 to 620 tokens whose completions
    are far shorter, 60,000 tokens a minute counted as OpenAI counts them (prompt + cap, when
    the request arrives): the share of the limit used while demand exceeds it, and 429s.
(2) Shared key: another client of the same Replicate key takes 30% of the create budget from
    the start for two minutes while 1,500 items of two tenants run: items DONE, creates per
    item, 429s per minute, share of what the other client leaves used, time to full rate once
    it stops.

Every service is a process of its own (tests/e2e/stack.py) on embedded PostgreSQL and Redis;
provider time is scaled (`--time-scale`) so that each scenario takes well under three minutes.

    python -m bench.e2e_bench                     # both, writes the report
    python -m bench.e2e_bench --only tokens       # one; prints, writes nothing
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import REPORT, machine, write_section
from bench.stackrun import Sampler, running_stack, submit, usage_table
from tests.e2e.stack import wait_terminal

IMG = REPORT.parent / "img"
TPM = 60_000
TOKEN_MODEL = "gpt-4o-mini"
CREATE_RPM = 600
UTILIZATION = 0.98


# ---- (1) TPM-bound ----

def _chats(tenant: str, n: int) -> dict[str, Any]:
    return {"provider": "openai", "model": TOKEN_MODEL, "items": [
        {"ref": f"{tenant}-{i}", "input": {
            "messages": [{"role": "user", "content": f"Write a short note {i} for {tenant}."}],
            "max_tokens": 20 + (i * 37 + len(tenant) * 101) % 601}}
        for i in range(n)]}


def tokens_bound(root: Path, time_scale: float) -> dict[str, Any]:
    limits = f"openai:\n  models:\n    {TOKEN_MODEL}: {{rpm: 100000, tpm: {TPM}}}\n"
    with running_stack(root, limits, time_scale=time_scale) as stack:
        clients = [stack.create_tenant(t)[1] for t in ("blog-a", "blog-b")]

        def charged() -> tuple[int, int, int]:
            entry = stack.emulator_stats()["keys"].get(stack.openai_key, {}).get("openai.chat.completions", {})
            return int(entry.get("tokens", 0)), int(entry.get("accepted", 0)), int(entry.get("rejected", 0))

        started = time.monotonic()
        with Sampler(charged, 0.25) as sampler:
            jobs = [submit(c, _chats(t, 200)) for c, t in zip(clients, ("blog-a", "blog-b"), strict=True)]
            finished = [wait_terminal(c, j) for c, j in zip(clients, jobs, strict=True)]
        wall = time.monotonic() - started
        done = sum(j["counts"]["DONE"] for j in finished)
        usage = []
        for client, job in zip(clients, jobs, strict=True):
            items = client.get(f"/v1/jobs/{job}/items", params={"limit": 1000}).json()["items"]
            usage += [i["usage"].get("total_tokens", 0) for i in items if i["usage"]]
        resources = stack.usage()
    samples = [(t - started, v) for t, v in sampler.samples]
    total_tokens, requests, served_429 = samples[-1][1]
    # "While demand exceeds it": from the first request to the last sample at which at least a
    # minute's worth of tokens was still to come.
    minute = 60 / time_scale
    charging = [s for s in samples if s[1][0] > 0]
    last = [s for s in samples if total_tokens - s[1][0] >= TPM]
    t0, t1 = charging[0][0] if charging else 0.0, last[-1][0] if last else samples[-1][0]
    first = min(samples, key=lambda s: abs(s[0] - t0))
    second = min(samples, key=lambda s: abs(s[0] - t1))
    span_min = (second[0] - first[0]) / minute
    used = (second[1][0] - first[1][0]) / span_min / TPM if span_min > 0 else float("nan")
    return {
        "time_scale": time_scale, "items": 400, "done": done, "wall_s": round(wall, 1), "tokens_charged": total_tokens,
        "requests": requests, "served_429": served_429, "real_tokens": sum(usage),
        "measured_provider_min": round(span_min, 2), "use_percent": round(100 * used, 1),
        "series": [(round(t * time_scale / 60, 3), v[0]) for t, v in samples], "resources": resources,
    }


# ---- (2) Shared key ----

def shared_key(root: Path, time_scale: float, foreign_minutes: float = 2.0) -> dict[str, Any]:
    limits = f"replicate: {{create_rpm: {CREATE_RPM}, read_rpm: 3000}}\n"
    n_each = 750
    with running_stack(root, limits, time_scale=time_scale,
                       predictor={"FAIRWAY_PREDICTOR_CONCURRENCY": "256"}) as stack:
        emulator = httpx.Client(base_url=stack.emulator_url, timeout=10)

        def foreign(share: float) -> None:
            reply = emulator.post("/_emulator/foreign", json={
                "key": stack.replicate_token, "budget": "replicate.create", "share": share})
            assert reply.status_code == 200, reply.text

        clients = [stack.create_tenant(t)[1] for t in ("store-a", "store-b")]
        foreign(0.3)
        started = time.monotonic()
        body = {"provider": "replicate", "model": "google/nano-banana"}
        jobs = [submit(c, {**body, "items": [{"ref": f"{t}-{i}", "input": {"prompt": f"{t} product {i}"}}
                                               for i in range(n_each)]})
                for c, t in zip(clients, ("store-a", "store-b"), strict=True)]
        stop_at = started + foreign_minutes * 60 / time_scale
        stopped = threading.Timer(max(0.0, stop_at - time.monotonic()), foreign, args=(0.0,))
        stopped.start()
        finished = [wait_terminal(c, j) for c, j in zip(clients, jobs, strict=True)]
        stopped.join()
        ended = time.monotonic()
        entry = stack.emulator_stats()["keys"][stack.replicate_token]["replicate.create"]
        lists = stack.emulator_stats()["keys"][stack.replicate_token].get("replicate.list", {})
        resources = stack.usage()
    wall_start = time.time() - (time.monotonic() - started)
    to_provider_s = time_scale  # one real second is this many provider seconds
    ours = {int(s): (a, r) for s, a, r in entry["per_second"]}
    theirs = {int(s): n for s, n in entry.get("foreign", {}).get("per_second", [])}
    first_s, last_s = int(wall_start), int(wall_start + (ended - started)) + 1
    seconds = list(range(first_s, last_s + 1))
    series = [((s - wall_start) * to_provider_s / 60, ours.get(s, (0, 0))[0], ours.get(s, (0, 0))[1], theirs.get(s, 0))
              for s in seconds]
    stop_min = foreign_minutes

    def rate(lo_min: float, hi_min: float, col: int) -> float:
        rows = [r for r in series if lo_min <= r[0] < hi_min]
        span = (hi_min - lo_min)
        return sum(r[col] for r in rows) / span if span > 0 else 0.0

    settle_min = 15 / 60
    # Over the whole time the other client runs: what we got through against what its calls
    # left of the limit. Before the first 429 its calls still left room in the provider's window
    # (we sent more than our share), and after it we pause until that excess has aged out.
    ours_total = sum(r[1] for r in series if 0 <= r[0] < stop_min)
    foreign_total = sum(r[3] for r in series if 0 <= r[0] < stop_min)
    left_total = CREATE_RPM * stop_min - foreign_total
    # Held at the measured share: the seconds after the first 429 in which we sent again (the
    # first of them partly paused), until the hold ends 55 provider seconds after it.
    first_429 = next((r[0] for r in series if r[2]), settle_min)
    held = [r for r in series if first_429 < r[0] < min(first_429 + 50 / 60, stop_min) and r[1] > 0][1:]
    row_min = time_scale / 60  # provider minutes a row (a real second) spans
    ours_rate = sum(r[1] for r in held) / (len(held) * row_min) if held else 0.0
    foreign_rate = sum(r[3] for r in held) / (len(held) * row_min) if held else 0.0
    steady = held[0][0] if held else first_429
    left = CREATE_RPM - foreign_rate
    late_429 = [r for r in series if r[0] >= settle_min and r[2]]
    per_minute: dict[int, int] = {}
    for r in late_429:
        per_minute[int(r[0])] = per_minute.get(int(r[0]), 0) + r[2]
    planned = CREATE_RPM * UTILIZATION
    recovered_at = None
    window = 10 / 60  # the rate over 10 provider seconds
    for r in series:
        if r[0] >= stop_min and rate(r[0], r[0] + window, 1) >= 0.95 * planned:
            recovered_at = r[0]
            break
    return {
        "time_scale": time_scale, "items": 2 * n_each,
        "done": sum(j["counts"]["DONE"] for j in finished),
        "creates_accepted": int(entry["accepted"]), "served_429": int(entry["rejected"]),
        "lists": int(lists.get("accepted", 0)),
        "late_429_per_minute": per_minute, "first_429_min": round(first_429, 2), "steady_from_min": round(steady, 2),
        "ours_per_min": round(ours_rate, 1),
        "foreign_per_min": round(foreign_rate, 1), "left_per_min": round(left, 1),
        "use_of_left_percent": round(100 * ours_rate / left, 1) if left else None,
        "phase_use_of_left_percent": round(100 * ours_total / left_total, 1) if left_total else None,
        "recovery_s": round((recovered_at - stop_min) * 60, 1) if recovered_at is not None else None,
        "wall_s": round(ended - started, 1), "series": series, "resources": resources,
    }


# ---- report ----

def _plot_tokens(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot([t for t, _ in series], [v / 1000 for _, v in series], label="tokens charged by the provider")
    end = series[-1][0]
    ax.plot([0, end], [0, end * TPM / 1000], "--", label=f"the limit, {TPM:,} TPM")
    ax.set_xlabel("provider minutes")
    ax.set_ylabel("thousand tokens")
    ax.legend(loc="upper left")
    ax.set_title("TPM-bound run: tokens as the provider counts them")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_shared(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    per_s = result["time_scale"] / 60  # provider minutes a real second

    def smooth(col: int) -> list[float]:
        # Per provider minute, over a moving window of about 10 provider seconds.
        k = max(1, round(10 / 60 / per_s))
        vals = [r[col] for r in series]
        return [sum(vals[max(0, i - k + 1): i + 1]) / (min(i + 1, k) * per_s) for i in range(len(vals))]

    xs = [r[0] for r in series]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(xs, smooth(1), label="Fairway creates / min")
    ax.plot(xs, smooth(3), label="the other client / min")
    ax.axhline(CREATE_RPM, color="grey", lw=0.8, ls=":", label=f"limit {CREATE_RPM}/min")
    for r in series:
        if r[2]:
            ax.axvline(r[0], color="red", lw=0.6, alpha=0.6)
    ax.set_xlabel("provider minutes (red: a second with a 429)")
    ax.set_ylabel("creates per minute")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Shared Replicate key: the other client takes 30%, then stops")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(result: dict[str, Any]) -> str:
    tok, sk = result["tokens"], result["shared_key"]
    late = sk["late_429_per_minute"]
    lines = [
        "`python -m bench.e2e_bench` (`bench/e2e_bench.py`): every service a process of its own, embedded",
        "PostgreSQL and Redis, the emulator as the provider counting as the provider documents.",
        f"Machine: {result['machine']}.",
        "",
        f"### TPM-bound: {tok['items']} chats of two tenants, {TPM:,} TPM counted at arrival",
        "",
        "Output caps 20 to 620 tokens, completions far shorter; OpenAI counts a request when it arrives,",
        "as its estimated prompt plus its cap, and never gives the difference back. Fairway reserves",
        f"exactly that per item (emulator time scale {tok['time_scale']:g}).",
        "",
        "| items DONE | requests | tokens charged | tokens really used | use of the limit while demand exceeds it |"
        " 429s served |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {tok['done']} | {tok['requests']} | {tok['tokens_charged']:,} | {tok['real_tokens']:,} |"
        f" **{tok['use_percent']}%** (over {tok['measured_provider_min']} provider min) | {tok['served_429']} |",
        "",
        f"Target: no 429 and at least 97% of the limit: {tok['use_percent']}%, {tok['served_429']} 429s"
        f" ({'met' if tok['use_percent'] >= 97 and not tok['served_429'] else 'NOT met'}).",
        "",
        "![tokens charged over time](img/e2e_tokens.png)",
        "",
        f"CPU and memory per service over the run ({tok['wall_s']} s):",
        "",
        usage_table(tok["resources"]),
        "",
        f"### Shared key: another client takes 30% of the create budget for two minutes, {sk['items']} items",
        "",
        f"Replicate {CREATE_RPM} creates a minute; the other client starts with a window already full of its",
        "calls and stops after two provider minutes; Fairway learns its share from the 429s"
        f" (emulator and ratelimiter time scale {sk['time_scale']:g}).",
        "",
        "| items DONE | creates accepted | 429s | listings | held: Fairway / other per min | use of what is left:"
        " held / whole phase | full rate again after the other stops |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {sk['done']} | {sk['creates_accepted']} | {sk['served_429']} | {sk['lists']} | {sk['ours_per_min']} /"
        f" {sk['foreign_per_min']} | **{sk['use_of_left_percent']}%** / {sk['phase_use_of_left_percent']}% |"
        f" {sk['recovery_s']} provider s |",
        "",
        f"The first 429 came {sk['first_429_min'] * 60:.0f} provider s in (until then the other client's calls"
        " still left room in the provider's window); rates are measured from"
        f" {sk['steady_from_min'] * 60:.0f} s while the measure held, and over its whole two minutes. 429s per"
        " provider minute after the first 15 s:"
        f" {dict(sorted(late.items())) or 'none'} (several in one second are the calls of one burst).",
        "Targets: every item DONE with one create each, at most one 429 a minute after the first 15 s,"
        " at least 95% of what the other client leaves, full planned rate within 60 s of its stop.",
        "",
        "![Fairway's and the other client's create rate](img/e2e_shared_key.png)",
        "",
        f"CPU and memory per service over the run ({sk['wall_s']} s):",
        "",
        usage_table(sk["resources"]),
    ]
    return "\n".join(lines)


def run(time_scale_tokens: float = 4.0, time_scale_shared: float = 5.0) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="fairway-e2e-bench-"))
    (root / "tokens").mkdir()
    (root / "shared").mkdir()
    return {
        "machine": machine(),
        "tokens": tokens_bound(root / "tokens", time_scale_tokens),
        "shared_key": shared_key(root / "shared", time_scale_shared),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", choices=["tokens", "shared-key"])
    parser.add_argument("--time-scale", type=float, default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fairway-e2e-bench-"))
    if args.only == "tokens":
        out = tokens_bound(root, args.time_scale or 4.0)
        print({k: v for k, v in out.items() if k != "series"})
        return
    if args.only == "shared-key":
        out = shared_key(root, args.time_scale or 5.0)
        print({k: v for k, v in out.items() if k != "series"})
        return
    result = run()
    IMG.mkdir(parents=True, exist_ok=True)
    _plot_tokens(result["tokens"], IMG / "e2e_tokens.png")
    _plot_shared(result["shared_key"], IMG / "e2e_shared_key.png")
    print({k: {kk: vv for kk, vv in v.items() if kk != "series"} if isinstance(v, dict) else v
           for k, v in result.items()})
    write_section("End to end", render(result))


if __name__ == "__main__":
    main()
