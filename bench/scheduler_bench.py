"""Scheduler benchmarks; writes the "## Scheduler" section of docs/benchmarks.md (+ PNG plots).

(a) lease + complete throughput with an instant upstream: the scheduler's own `claim_items`
    and `complete_items` statements, next to pgqueuer's dequeue + log on the same PostgreSQL,
    with the same batch size and the same number of concurrent workers;
(b) dispatch-decision latency as the backlog grows (10k -> 1M items) and the tenants grow
    (10 -> 10k): the fair pick in memory, and the claim statement on the real table;
(c) per-tenant dispatch rate over time, skewed: one tenant with 50k items, nine with 500
    arriving staggered, weights 1 to 3 (the fair-share core run in simulated time).

    python -m bench.scheduler_bench            # the sizes in the report
    python -m bench.scheduler_bench --quick    # smaller sizes (the report says which ran)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.report import machine, write_section
from services.common.embedded import EmbeddedPostgres, create_database
from services.scheduler.dispatcher import claim
from services.scheduler.fairness import LaneShares
from services.scheduler.migrations import migrate
from services.scheduler.sql import QUERIES, SERVER_SETTINGS

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
LANE = "replicate:create"


# ---------- database helpers ----------

async def fresh_db(server_dsn: str) -> str:
    return await create_database(server_dsn, "fairway_bench")


async def drop_db(server_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await conn.close()


async def add_tenants(conn: asyncpg.Connection, n: int) -> list[str]:
    await conn.execute(
        "INSERT INTO tenants (id, key_hash, weight, max_queued) "
        "SELECT 't' || g, sha256(('t' || g)::bytea), 1 + g % 3, 100000000 FROM generate_series(0, $1 - 1) g",
        n,
    )
    return [f"t{i}" for i in range(n)]


async def add_backlog(conn: asyncpg.Connection, tenants: int, per_tenant: int) -> None:
    """One job of `per_tenant` items for each tenant, counted as a submit counts it."""
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE new_jobs ON COMMIT DROP AS "
            "SELECT gen_random_uuid() AS id, 't' || g AS tenant_id FROM generate_series(0, $1 - 1) g", tenants,
        )
        await conn.execute(
            "INSERT INTO jobs (id, tenant_id, provider, model, operation, lane, items_total) "
            "SELECT id, tenant_id, 'replicate', 'acme/fast', 'prediction', $1, $2 FROM new_jobs", LANE, per_tenant,
        )
        await conn.execute(
            "INSERT INTO job_cursors (job_id, lane, tenant_id, priority, job_seq, total, created_at) "
            "SELECT id, lane, tenant_id, priority, seq, items_total, created_at FROM jobs "
            "WHERE id IN (SELECT id FROM new_jobs)",
        )
        await conn.execute(
            "INSERT INTO items (id, job_id, tenant_id, lane, priority, seq, ref, input) "
            "SELECT gen_random_uuid(), j.id, j.tenant_id, $1, 0, s, 'r' || s, '{\"prompt\": \"a cat\"}' "
            "FROM new_jobs j, generate_series(1, $2) s", LANE, per_tenant,
        )
        await conn.execute(
            "INSERT INTO queue_counts (lane, tenant_id, unfinished) SELECT $1, tenant_id, $2 FROM new_jobs "
            "ON CONFLICT (lane, tenant_id) DO UPDATE SET unfinished = queue_counts.unfinished + excluded.unfinished",
            LANE, per_tenant,
        )
    await conn.execute("ANALYZE items")


async def index_from_db(conn: asyncpg.Connection) -> LaneShares:
    """The dispatcher's resync: the index from the counters."""
    shares = LaneShares()
    for row in await conn.fetch(QUERIES["queue_counts"]):
        shares.set_backlog(row["tenant_id"], row["pending"])
    return shares


# ---------- (a) lease + complete throughput ----------

async def fairway_throughput(dsn: str, items: int, batch: int, workers: int, tenants: int) -> float:
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await add_tenants(conn, tenants)
    await add_backlog(conn, tenants, items // tenants)
    await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=workers, max_size=workers, server_settings=SERVER_SETTINGS)
    names = [f"t{i}" for i in range(tenants)]
    expected = items // tenants * tenants
    done = 0

    async def worker(k: int) -> None:
        nonlocal done
        turn, idle = k, 0
        while True:
            # A claim across several tenants as the dispatcher sends it (fair split of the batch).
            per = [batch // tenants + (1 if i < batch % tenants else 0) for i in range(tenants)]
            per = per[turn % tenants:] + per[:turn % tenants]
            turn += 1
            # The transactions the dispatcher and the outcome group commit run, locks first.
            async with pool.acquire() as conn:
                claimed = await claim(conn, LANE, dict(zip(names, per, strict=True)), f"w{k}", 30.0)
            rows = [r for r in claimed if r["id"] is not None]
            if not rows:
                if done >= expected:
                    return
                idle += 1  # another worker held the rest for the moment
                assert idle < 10_000, f"stalled at {done} of {expected} items"
                continue
            idle = 0
            ids = [r["id"] for r in rows]
            await pool.fetch(QUERIES["complete_items"], ids, [r["lease"] for r in rows],
                             ['{"ok": true}'] * len(rows), [None] * len(rows))
            done += len(rows)

    started = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(workers)))
    elapsed = time.perf_counter() - started
    await pool.close()
    assert done == expected, done
    return done / elapsed


async def pgqueuer_throughput(dsn: str, items: int, batch: int, workers: int) -> float:
    from pgqueuer.adapters.persistence.queries import Queries
    from pgqueuer.ports.repository import EntrypointExecutionParameter

    conn = await asyncpg.connect(dsn)
    queries = Queries.from_asyncpg_connection(conn)
    await queries.install()
    for start in range(0, items, 10_000):
        n = min(10_000, items - start)
        await queries.enqueue(["bench"] * n, [b'{"prompt": "a cat"}'] * n, [0] * n)
    await conn.execute("ANALYZE")
    await conn.close()
    done = 0

    async def worker() -> None:
        nonlocal done
        wconn = await asyncpg.connect(dsn)
        q = Queries.from_asyncpg_connection(wconn)
        manager = uuid.uuid4()
        entry = {"bench": EntrypointExecutionParameter(concurrency_limit=0)}
        try:
            while True:
                jobs = await q.dequeue(batch, entry, manager, None, timedelta(seconds=30))  # type: ignore[arg-type]
                if not jobs:
                    return
                await q.log_jobs([(job, "successful", None) for job in jobs])
                done += len(jobs)
        finally:
            await wconn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    assert done == items, done
    return done / elapsed


async def bench_throughput(
    server: str, items: int, batches: list[int], workers_list: list[int], repeats: int = 3
) -> list[dict[str, Any]]:
    results = []
    for batch, workers in [(b, w) for w in workers_list for b in batches]:
        rates: dict[str, list[float]] = {"fairway": [], "pgqueuer": []}
        # Alternate the two, `repeats` times each, and keep the best of each: on a shared
        # machine the load moves between runs, and the best run is the least disturbed one.
        for _ in range(repeats):
            for system in ("fairway", "pgqueuer"):
                dsn = await fresh_db(server)
                try:
                    if system == "fairway":
                        rate = await fairway_throughput(dsn, items, batch, workers, tenants=10)
                    else:
                        rate = await pgqueuer_throughput(dsn, items, batch, workers)
                finally:
                    await drop_db(server, dsn)
                rates[system].append(rate)
                print(f"  throughput {system:9s} batch={batch:4d} workers={workers}: {rate:8.0f} items/s",
                      flush=True)
        for system, got in rates.items():
            results.append({"system": system, "batch": batch, "workers": workers, "items": items,
                            "items_per_s": max(got), "runs": got})
    return results


# ---------- (b) dispatch-decision latency ----------

def pick_latency(backlog: int, tenants: int, batch: int, rounds: int) -> dict[str, float]:
    shares = LaneShares()
    per = max(1, backlog // tenants)
    for i in range(tenants):
        shares.add_backlog(f"t{i}", per)
    weights = {f"t{i}": float(1 + i % 3) for i in range(tenants)}
    weight_of = weights.__getitem__
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        picks = shares.pick(batch, weight_of, lambda _t: 1 << 30)
        shares.commit(picks, weight_of)
        times.append(time.perf_counter() - started)
        for tenant, n in picks.items():  # steady state: as many arrive as leave
            shares.add_backlog(tenant, n)
    return _stats(times)


def _stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"median_ms": statistics.median(times) * 1e3, "p99_ms": times[int(len(times) * 0.99)] * 1e3,
            "max_ms": times[-1] * 1e3}


async def claim_latency(
    server: str, sizes: list[int], tenants: int, batch: int, rounds: int
) -> list[dict[str, Any]]:
    """Grow one table's backlog through `sizes`; at each size time pick + claim batches."""
    dsn = await fresh_db(server)
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    out = []
    try:
        await migrate(conn)
        await add_tenants(conn, tenants)
        have = 0
        weights = {f"t{i}": float(1 + i % 3) for i in range(tenants)}
        for size in sizes:
            grow = time.perf_counter()
            await add_backlog(conn, tenants, max(1, (size - have) // tenants))
            have = await conn.fetchval("SELECT sum(unfinished) FROM queue_counts")
            grow_s = time.perf_counter() - grow
            shares = await index_from_db(conn)
            picks_t, claims_t = [], []
            for _ in range(rounds):
                started = time.perf_counter()
                picks = shares.pick(batch, weights.__getitem__, lambda _t: 1 << 30)
                picked = time.perf_counter()
                rows = await conn.fetch(QUERIES["claim_items"], LANE, list(picks), list(picks.values()), "b", 30.0,
                                       False)
                claimed = time.perf_counter()
                got: dict[str, int] = defaultdict(int)
                for r in rows:
                    if r["id"] is not None:
                        got[r["tenant_id"]] += 1
                shares.commit(dict(got), weights.__getitem__)
                picks_t.append(picked - started)
                claims_t.append(claimed - picked)
            have = await conn.fetchval("SELECT sum(unfinished) FROM queue_counts")
            row = {"backlog": size, "tenants": tenants, "batch": batch, "pick": _stats(picks_t),
                   "claim": _stats(claims_t), "load_s": grow_s}
            out.append(row)
            print(f"  claim backlog={size:8d} tenants={tenants:6d}: pick {row['pick']['median_ms']:.2f} ms, "
                  f"claim {row['claim']['median_ms']:.2f} ms (median)", flush=True)
    finally:
        await conn.close()
        await drop_db(server, dsn)
    return out


# ---------- (c) skewed scenario ----------

def skewed(rate_per_s: int = 100, tick_s: float = 0.1, seconds: int = 120) -> dict[str, Any]:
    """One tenant with 50k items from t=0, nine with 500 each arriving every 5 s from t=5,
    weights 1, 2, 3 in turn; a budget of `rate_per_s` items/s dispatched every `tick_s`."""
    shares = LaneShares()
    weights = {"big": 1.0, **{f"s{i}": float(1 + i % 3) for i in range(1, 10)}}
    arrivals = {0.0: ("big", 50_000), **{5.0 * i: (f"s{i}", 500) for i in range(1, 10)}}
    per_tick = round(rate_per_s * tick_s)
    series: dict[str, list[int]] = {t: [0] * seconds for t in weights}
    first: dict[str, float] = {}
    for step in range(int(seconds / tick_s)):
        now = step * tick_s
        for at, (tenant, n) in arrivals.items():
            if abs(at - now) < tick_s / 2:
                shares.add_backlog(tenant, n)
        picks = shares.pick(per_tick, weights.__getitem__, lambda _t: 1 << 30)
        shares.commit(picks, weights.__getitem__)
        for tenant, n in picks.items():
            series[tenant][int(now)] += n
            first.setdefault(tenant, now)
    delays = {t: first[t] - at for at, (t, _) in arrivals.items() if t in first}
    return {"series": series, "weights": weights, "first_dispatch_delay_s": delays,
            "rate_per_s": rate_per_s, "tick_s": tick_s}


# ---------- plots and report ----------

def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    tp = results["throughput"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    groups = sorted({(r["workers"], r["batch"]) for r in tp})
    width = 0.38
    for k, system in enumerate(("fairway", "pgqueuer")):
        vals = [next(r["items_per_s"] for r in tp if r["system"] == system and (r["workers"], r["batch"]) == g)
                for g in groups]
        ax.bar([i + (k - 0.5) * width for i in range(len(groups))], vals, width, label=system)
    ax.set_xticks(range(len(groups)), [f"{w} worker{'s' if w > 1 else ''}\nbatch {b}" for w, b in groups])
    ax.set_ylabel("items leased + completed / s")
    ax.set_title("Lease + complete, instant upstream, same PostgreSQL")
    ax.legend()
    fig.tight_layout()
    fig.savefig(IMG / "scheduler_throughput.png", dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for tenants, rows in results["pick"].items():
        xs = [r["backlog"] for r in rows]
        ax1.plot(xs, [r["median_ms"] for r in rows], marker="o", label=f"{tenants} tenants")
    ax1.set_xscale("log")
    ax1.set_xlabel("backlog (items)")
    ax1.set_ylabel("ms per batch (median)")
    ax1.set_title(f"Fair pick of {results['batch']} items, in memory")
    ax1.axhline(5, color="grey", linestyle=":", label="5 ms")
    ax1.legend(fontsize=8)
    for tenants, rows in results["claim"].items():
        xs = [r["backlog"] for r in rows]
        ax2.plot(xs, [r["pick"]["median_ms"] + r["claim"]["median_ms"] for r in rows], marker="o",
                 label=f"{tenants} tenants, pick + claim")
    ax2.set_xscale("log")
    ax2.set_xlabel("backlog (items in PostgreSQL)")
    ax2.set_ylabel("ms per batch (median)")
    ax2.set_title(f"Pick + claim statement, batch {results['batch']}")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "scheduler_decision_latency.png", dpi=110)
    plt.close(fig)

    sk = results["skewed"]
    fig, ax = plt.subplots(figsize=(9, 4))
    for tenant, series in sk["series"].items():
        ax.plot(range(len(series)), series, label=f"{tenant} (w={sk['weights'][tenant]:g})",
                linewidth=2.2 if tenant == "big" else 1.2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("items dispatched / s")
    ax.set_title(f"Skewed load: 50k-item tenant vs nine 500-item tenants, budget {sk['rate_per_s']} items/s")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(IMG / "scheduler_skewed.png", dpi=110)
    plt.close(fig)


def report(results: dict[str, Any]) -> str:
    tp = results["throughput"]
    lines = [
        f"`python -m bench.scheduler_bench{' --quick' if results['quick'] else ''}` "
        f"(`bench/scheduler_bench.py`, `run(...) -> dict`). Machine: {machine()}, one PostgreSQL "
        f"({results['pg']}) shared by everything, other test runs on the same cores "
        f"(5-minute load average {results.get('load', float('nan')):.1f} at the end of the run).",
        "",
        "### (a) Lease + complete throughput, instant upstream",
        "",
        f"{tp[0]['items']:,} queued items; 1 or 4 concurrent workers, each looping *lease a batch -> "
        f"complete it*; the two systems alternate, {len(tp[0]['runs'])} runs each, best run shown "
        "(all runs in parentheses). "
        "Fairway runs the scheduler's own code (`dispatcher.claim`: `claim_items`, a fair split over 10 "
        "tenants, lease token, attempts, no counter row, one statement; `complete_items`: fenced by the "
        "lease, the (lane, tenant) and job counters, ledger charge, one statement); pgqueuer 1.6 runs "
        "`dequeue` + `log_jobs` on the same server, same batch size, same number of workers.",
        "",
        "| workers | batch | fairway items/s | pgqueuer items/s | fairway / pgqueuer |",
        "| --- | --- | --- | --- | --- |",
    ]
    for w, b in sorted({(r["workers"], r["batch"]) for r in tp}):
        f = next(r["items_per_s"] for r in tp if r["system"] == "fairway" and (r["workers"], r["batch"]) == (w, b))
        p = next(r["items_per_s"] for r in tp if r["system"] == "pgqueuer" and (r["workers"], r["batch"]) == (w, b))
        runs = {r["system"]: "/".join(f"{x:,.0f}" for x in r["runs"]) for r in tp
                if (r["workers"], r["batch"]) == (w, b)}
        lines.append(f"| {w} | {b} | {f:,.0f} ({runs['fairway']}) | {p:,.0f} ({runs['pgqueuer']}) | {f / p:.2f} |")
    lines += ["", "Reading it: the machine's load moves between runs of the same configuration (see the runs in "
              "parentheses), so only large, repeated differences mean something. A claim updates no counter "
              "row (queued and in-flight counts are derived from the items holding a lease, migration 0003), "
              "and a claim and a completion are one statement each, without BEGIN/COMMIT around them: a batch "
              "costs two round trips. What is left at batch 32 is per-batch work: two large statements planned "
              "afresh, and every item written with a new entry in four indexes (`status` is in the partial "
              "indexes' predicates, so no transition is a HOT update). With four workers the completions also "
              "wait on one another: each locks the counter rows of the ten tenants and the ten jobs it "
              "completes items of until it commits, and here all four complete items of the same ten; "
              "pgqueuer keeps no counters.",
              "", "![throughput](img/scheduler_throughput.png)", "",
              "### (b) Dispatch-decision latency vs backlog and tenants", "",
              f"The fair pick (`LaneShares.pick` + `commit`, batch {results['batch']}, weights 1-3) over a "
              "backlog spread evenly over the tenants; the index holds counts per tenant, so the backlog "
              "size never enters. Median / p99 ms per batch:", "",
              "| backlog | " + " | ".join(f"{t:,} tenants" for t in results["pick"]) + " |",
              "| --- |" + " --- |" * len(results["pick"])]
    sizes = [r["backlog"] for r in next(iter(results["pick"].values()))]
    for i, size in enumerate(sizes):
        cells = [f"{rows[i]['median_ms']:.3f} / {rows[i]['p99_ms']:.3f}" for rows in results["pick"].values()]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    lines += ["", "The same pick followed by the real `claim_items` statement on a table grown to each size "
              "(the index rebuilt from `queue_counts` as a resync does; medians in ms):", "",
              "| backlog | tenants | pick | claim statement | pick + claim | resync rows |",
              "| --- | --- | --- | --- | --- | --- |"]
    for tenants, rows in results["claim"].items():
        for r in rows:
            lines.append(f"| {r['backlog']:,} | {tenants:,} | {r['pick']['median_ms']:.2f} | "
                         f"{r['claim']['median_ms']:.2f} | {r['pick']['median_ms'] + r['claim']['median_ms']:.2f} | "
                         f"{tenants:,} |")
    lines += ["", "The fair pick is the decision, and it stays flat and far under 5 ms: it holds counts per "
              "tenant, never items. The claim statement is one short index range scan per picked tenant "
              "(`items_ready`), so its index work does not grow with the backlog either; what it costs is "
              "writing the claimed rows (it updates no job or counter row: with 10,000 tenants it used to "
              "update 256 of each as well). With 10 tenants a batch lands on a few adjacent heap pages; with "
              "10,000 tenants a batch of 256 takes one item from each of 256 tenants, i.e. 256 different "
              "pages, and once the table outgrows the server's buffer cache (1M items is ~400 MB here, "
              "`shared_buffers` 128 MB) each of them is a read plus a full-page image in the WAL after every "
              "checkpoint. That is the cost of touching 256 rows of a cold table, not of the decision: the "
              "5 ms target holds for the pick, not for pick + claim."]
    sk = results["skewed"]
    delays = sk["first_dispatch_delay_s"]
    lines += ["", "![decision latency](img/scheduler_decision_latency.png)", "",
              "### (c) Skewed load, per-tenant dispatch rate", "",
              f"One tenant (`big`, weight 1) with 50,000 items from t=0; nine tenants with 500 items each "
              f"arriving every 5 s from t=5 s, weights 1, 2, 3 in turn; a budget of {sk['rate_per_s']} items/s "
              f"dispatched every {sk['tick_s'] * 1000:.0f} ms. This runs the fair-share core (`LaneShares`) "
              "in simulated time, so the plot shows the policy without machine noise; (a) and (b) time the "
              "real statements.", "",
              f"Each newcomer's first item went out in the first dispatch after it arrived (delay "
              f"{max(v for k, v in delays.items() if k != 'big') * 1000:.0f} ms at most, i.e. the next tick). "
              "While n tenants are backlogged, each gets rate x weight / sum of weights; `big` keeps the "
              "remainder and gets the whole budget back when the small ones drain.", "",
              "![skewed](img/scheduler_skewed.png)", ""]
    lines += results.get("notes", [])
    return "\n".join(lines)


async def run_async(*, quick: bool = False, dsn: str | None = None) -> dict[str, Any]:
    embedded = None
    if dsn is None:
        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="fairway-bench-")) / "data")
        dsn = embedded.start()
    try:
        conn = await asyncpg.connect(dsn)
        pg = (await conn.fetchval("SHOW server_version")).split()[0]
        await conn.close()
        batch = 256
        items = 10_000 if quick else 20_000
        sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
        tenant_counts = [10, 10_000] if quick else [10, 1_000, 10_000]
        print("(a) throughput", flush=True)
        throughput = await bench_throughput(dsn, items, [32, 256], [1, 4])
        print("(b) pick latency", flush=True)
        pick = {t: [{"backlog": s, **pick_latency(s, t, batch, 300)} for s in sizes] for t in tenant_counts}
        claim = {}
        for t in (10, 10_000):
            claim[t] = await claim_latency(dsn, sizes, t, batch, rounds=20)
        print("(c) skewed", flush=True)
        results = {"quick": quick, "pg": pg, "batch": batch, "throughput": throughput, "pick": pick,
                   "claim": claim, "skewed": skewed(), "load": os.getloadavg()[1]}
        return results
    finally:
        if embedded is not None:
            embedded.stop()


def run(*, quick: bool = False, dsn: str | None = None, write: bool = True) -> dict[str, Any]:
    results = asyncio.run(run_async(quick=quick, dsn=dsn))
    Path(tempfile.gettempdir(), "fairway_scheduler_bench.json").write_text(json.dumps(results, default=str))
    if write:
        plot(results)
        write_section("Scheduler", report(results))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (100k backlog at most)")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"), help="PostgreSQL server DSN")
    args = parser.parse_args()
    run(quick=args.quick, dsn=args.dsn)


if __name__ == "__main__":
    main()
