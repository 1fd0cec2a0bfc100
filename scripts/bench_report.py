"""Renders the results of scripts/bench.py: bench/results.md (tables) and bench/throughput_lag.png.

`python3 scripts/bench_report.py bench/results.json` re-renders both from a saved run.
"""

import json
import sys
from pathlib import Path

TARGETS = {
    "throughput_ratio": 0.97,
    "p99_ratio": 1.10,
    "lag_p99_ms": 20.0,
    "rss_mb": 32.0,
    "vs_vacuum": 100.0,
    "vs_rsync": 20.0,
}


def fmt(v, digits=2):
    """A number for a table cell: None as an em dash, large numbers without decimals."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) >= 10 or v == 0 else f"{v:.{digits + 1}g}"


def mb(v):
    return None if v is None else v / 1e6


def yes(ok):
    return "—" if ok is None else ("yes" if ok else "**no**")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------


def targets(r):
    """Each target of the issue with its measured value; reported, never asserted."""
    w = r["writer"]["rows"]
    worst_t = min(w, key=lambda x: x["throughput_ratio"] or 0)
    worst_p = max(w, key=lambda x: x["p99_ratio"] or 0)
    lag2k = [x for x in r["lag"]["rows"] if x["rate"] == 2000]
    rss = max(r["rss"]["rows"], key=lambda x: x["overhead_mb"])
    incr = {x["method"]: x for x in r["incr"]["rows"] if x["frac"] == 0.001}

    def where(x):
        return f"{x['workload']} {x['journal']}/{x['sync']}"

    def also(label, key, worst):
        """The same target for a reference arm ("" when the arm did not run)."""
        vals = [x for x in w if x.get(key) is not None]
        if not vals:
            return ""
        x = worst(vals, key=lambda x: x[key])
        return f"; {label}: worst {fmt(x[key])}× ({where(x)})"

    def elsewhere(key, worst):
        return also("backup on another device", key, worst)

    def paired(key, worst):
        # Runs from before paired ratios were kept have none.
        return also("median of per-round ratios", key, worst)

    def verdict_counts(key, target, higher_is_better):
        """How many modes the per-round 90 % intervals put on each side ("" for older runs)."""
        found = [verdict(x.get(key), target, higher_is_better) for x in w]
        if not any(v != "—" for v in found):
            return ""
        n = len(found)
        parts = [
            f"{label} in {found.count(v)}"
            for v, label in (
                ("met", "met"),
                ("**missed**", "missed"),
                ("within noise", "within noise"),
            )
            if found.count(v)
        ]
        return f"; per-round 90 % intervals, {n} modes: " + ", ".join(parts)

    vac, rs = incr.get("vacuum", {}).get("times_spool"), incr.get("rsync", {}).get("times_spool")
    big = r["incr"]["db"]["pages"] * r["incr"]["db"]["page_size"] / 1e6
    rows = [
        [
            "writer throughput spool ≥ 0.97× plain, every mode",
            f"worst {fmt(worst_t['throughput_ratio'])}× ({where(worst_t)})"
            + paired("throughput_ratio_paired", min)
            + verdict_counts("throughput_ratio_ci", TARGETS["throughput_ratio"], True)
            + elsewhere("elsewhere_throughput_ratio", min)
            + also(
                "a forwarding shim and one idle thread with its own descriptor table, no capture",
                "threaded_throughput_ratio",
                min,
            ),
            yes(all((x["throughput_ratio"] or 0) >= TARGETS["throughput_ratio"] for x in w)),
        ],
        [
            "commit latency p99 spool ≤ 1.10× plain, every mode",
            f"worst {fmt(worst_p['p99_ratio'])}× ({where(worst_p)})"
            + paired("p99_ratio_paired", max)
            + verdict_counts("p99_ratio_ci", TARGETS["p99_ratio"], False)
            + elsewhere("elsewhere_p99_ratio", max),
            yes(all((x["p99_ratio"] or 99) <= TARGETS["p99_ratio"] for x in w)),
        ],
        [
            "backup lag p99 ≤ 20 ms at 2,000 txn/s",
            ", ".join(
                f"{fmt(x['lag_p99_ms'])} ms ({x['journal']}, "
                f"{x['achieved_rate']:,.0f} txn/s achieved)"
                for x in lag2k
            ),
            yes(all(x["lag_p99_ms"] <= TARGETS["lag_p99_ms"] for x in lag2k)) if lag2k else "—",
        ],
        [
            f"peak RSS overhead ≤ 32 MB for a {r['rss']['mb']} MB transaction",
            f"{fmt(rss['overhead_mb'])} MB ({rss['journal']})",
            yes(rss["overhead_mb"] <= TARGETS["rss_mb"]),
        ],
        [
            f"0.1 % change of a {big:.0f} MB db: ≥ 100× faster than VACUUM INTO",
            f"{fmt(vac)}×",
            yes(None if vac is None else vac >= TARGETS["vs_vacuum"]),
        ],
        [
            f"0.1 % change of a {big:.0f} MB db: ≥ 20× faster than sqlite3_rsync",
            f"{fmt(rs)}×" if rs else "skipped (see below)",
            yes(None if rs is None else rs >= TARGETS["vs_rsync"]),
        ],
    ]
    return table(["target", "measured", "met"], rows)


def glance(r):
    """One line per measurement, for the README."""
    rows = []
    for x in r["lag"]["rows"]:
        rows.append(
            [
                f"backup lag at {x['rate']:,} txn/s, {x['journal']} (achieved "
                f"{x['achieved_rate']:,.0f}/s)",
                f"p50 {fmt(x['lag_p50_ms'])} / p99 {fmt(x['lag_p99_ms'])} / max "
                f"{fmt(x['lag_max_ms'])} ms; spool_status lag_ms ≤ {fmt(x['status_lag_ms_max'])}",
            ]
        )
    for x in r.get("sporadic", {}).get("rows", []):
        rows.append(
            [
                f"backup lag of sporadic commits (one per 2 s), {x['journal']}, from "
                f"{x['committer']}",
                f"p50 {fmt(x['lag_p50_ms'])} / max {fmt(x['lag_max_ms'])} ms ({x['txns']} commits)",
            ]
        )
    for j, x in r["ramp"].items():
        rows.append(
            [
                f"max sustained commit rate the backup keeps up with, {j}",
                f"{fmt(x['max_sustained_rate'])} txn/s ({x['limited_by']})",
            ]
        )
    for x in r["consumer"]:
        rows.append(
            [
                f"consumer applying a bulk transaction, {x['journal']}/{x['sync']}",
                f"{fmt(x['apply_mb_s'])} MB/s, {fmt(x['cpu_s_per_gb'])} CPU s/GB",
            ]
        )
    for x in r["rss"]["rows"]:
        rows.append(
            [
                f"peak RSS, one {x['txn_mb']} MB transaction, {x['journal']}",
                f"plain {fmt(x['plain_peak_mb'])} MB, spool {fmt(x['spool_peak_mb'])} MB",
            ]
        )
    for frac in sorted({x["frac"] for x in r["incr"]["rows"]}):
        cells = [
            f"{x['method']} {fmt(x['wall_ms'])} ms" for x in r["incr"]["rows"] if x["frac"] == frac
        ]
        rows.append(
            [f"backup up to date after {frac * 100:g} % of pages changed", ", ".join(cells)]
        )
    for x in r["cont"]["rows"]:
        done = f"finished {x['finished']}, " if x["finished"] else ""
        restarts = f", {fmt(x['restarts'])} restarts" if x["method"] == "backup-step" else ""
        rows.append(
            [
                f"under {r['cont']['rate']} txn/s of writes: {x['method']}",
                f"{done}writer p99 {fmt(x['writer_p99_ms'])} ms "
                f"({fmt(x['p99_vs_alone'])}× alone){restarts}",
            ]
        )
    return table(["measurement", "result"], rows)


def header(r):
    m, load = r["machine"], r["load"]["overall"]
    # Runs from before steal was measured have no steal_pct: they said nothing about it.
    steal = load.get("steal_pct")
    busy = load["other_cpu_pct"] >= 5 or (steal or 0) >= 5
    said = f"other processes used {load['other_cpu_pct']} % of the CPUs" + (
        f", the hypervisor took {steal} % of our vCPUs' time for other guests (steal)"
        if steal is not None
        else ""
    )
    state = (
        f"**machine busy**: {said} during the run, numbers are noisy"
        if busy
        else f"machine idle ({said})"
    )
    kind = (
        "QUICK smoke run (tiny sizes, not representative)" if r["mode"] == "quick" else "full run"
    )
    out = [
        f"{kind}: `{r['command']}`, started {r['started']}, took {load['seconds']:.0f} s; "
        f"{state}.\n"
    ]
    out.append(
        table(
            [
                "nproc",
                "CPU",
                "memory",
                "disk (benchmark files)",
                "kernel",
                "SQLite",
                "spoolvfs",
                "commit",
            ],
            [
                [
                    str(m["nproc"]),
                    m["cpu"],
                    f"{m['memory_gb']} GB",
                    m["disk"],
                    m["kernel"],
                    m["sqlite"],
                    m["spoolvfs"],
                    m["commit"],
                ]
            ],
        )
    )
    return "\n".join(out)


def machine_limits(r):
    d = r["disk"]
    return table(
        ["sequential write (1 MiB writes + fsync)", "fsync p50", "fsync p99"],
        [
            [
                f"{fmt(d['seq_write_mb_s'])} MB/s",
                f"{fmt(d['fsync']['p50_ms'])} ms",
                f"{fmt(d['fsync']['p99_ms'])} ms",
            ]
        ],
    ) + corunner(r)


def corunner(r):
    """What a busy second core costs the writer on this machine (section 7, co-runner)."""
    c = r.get("corunner")
    if not c:
        return ""
    return (
        "\nCo-runner: the plain writer (small WAL NORMAL transactions, pinned to one CPU) alone and "
        "with a process busy-looping on another CPU, interleaved medians. The loop shares nothing "
        "with the writer but the hardware, so its ratio is what any background work costs a "
        "writer here per busy cycle; spool's consumer is such work (its share of a core is in "
        "the CPU table of section 1).\n\n"
        + table(
            [
                "writer alone txn/s",
                "other CPU busy txn/s",
                "throughput ratio",
                "CPU µs/txn alone",
                "CPU µs/txn other busy",
                "CPU ratio",
            ],
            [
                [
                    c["alone"]["throughput"],
                    c["busy"]["throughput"],
                    c["throughput_ratio"],
                    c["alone"]["cpu_us"],
                    c["busy"]["cpu_us"],
                    c["cpu_ratio"],
                ]
            ],
        )
    )


def writer(r):
    rows = [
        [
            x["workload"],
            x["journal"],
            x["sync"],
            x["plain"]["throughput"],
            x["spool"]["throughput"],
            x["throughput_ratio"],
            x["plain"]["p50_ms"],
            x["spool"]["p50_ms"],
            x["plain"]["p99_ms"],
            x["spool"]["p99_ms"],
            x["p99_ratio"],
            x.get("shim_throughput_ratio"),
            x.get("shim_p99_ratio"),
            x.get("threaded_throughput_ratio"),
            x.get("threaded_p99_ratio"),
            x.get("elsewhere_throughput_ratio"),
            x.get("elsewhere_p99_ratio"),
        ]
        for x in r["writer"]["rows"]
    ]
    c = r["config"]
    wal_n = c.get("small_txns_wal", c["small_txns"])
    return (
        f"small: one-row transactions (200 B; {wal_n:,} in WAL, {c['small_txns']:,} in rollback "
        f"modes) after {c['small_warmup']} warm-up, throughput in txn/s; bulk: 3 transactions of "
        f"{c['bulk_rows']:,} rows, throughput in rows/s. Latency = BEGIN..COMMIT per transaction. "
        f"Medians of {reps_text(c)} interleaved repetitions. *shim*: `passthru` (c/passthru.c), a C "
        "VFS that only forwards every call to unix, run in the same rounds: its ratios to plain "
        "show how far two arms that execute the same work drift apart on this machine (the noise "
        "floor of every ratio in the table). *shim + thread*: the same shim in a process that "
        "also has one idle thread which, like spoolvfs's consumer, has left the process's "
        "descriptor table: glibc still leaves its single-thread fast paths (SQLite's and malloc's "
        "mutexes take a locked instruction), the floor of spoolvfs's design, a background thread "
        "in the application's process. *backup elsewhere*: `spool` with the backup on "
        "another device (a tmpfs stands in for it: this VM has one disk), run in the same "
        "rounds: what capture alone costs the writer, without the backup's fsyncs queueing on "
        "the application's disk.\n\n"
        + table(
            [
                "workload",
                "journal",
                "sync",
                "plain /s",
                "spool /s",
                "ratio",
                "p50 plain ms",
                "p50 spool ms",
                "p99 plain ms",
                "p99 spool ms",
                "p99 ratio",
                "shim ratio",
                "shim p99 ratio",
                "shim + thread ratio",
                "shim + thread p99 ratio",
                "backup elsewhere ratio",
                "backup elsewhere p99 ratio",
            ],
            rows,
        )
        + writer_verdicts(r)
        + writer_cpu(r)
        + instructions(r)
        + writer_profile(r)
    )


def reps_text(c):
    fast = c.get("reps_fast")
    if fast is None or fast == c["reps"]:
        return f"{c['reps']}"
    return f"{fast} (small WAL, bulk) or {c['reps']} (small rollback-mode)"


def verdict(ci, target, higher_is_better):
    """Met, missed, or within noise: where the 90 % interval of the per-round ratio lies."""
    if ci is None:
        return "—"
    lo, hi = ci
    if higher_is_better:
        return "met" if lo >= target else ("**missed**" if hi < target else "within noise")
    return "met" if hi <= target else ("**missed**" if lo > target else "within noise")


def ci_text(median, ci):
    if median is None:
        return "—"
    if ci is None:
        return fmt(median)
    return f"{fmt(median)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def writer_verdicts(r):
    """Per mode: the per-round spool/plain ratios with their 90 % confidence intervals, read
    against the targets, beside the same for the forwarding shim (which does plain's work)."""
    w = [x for x in r["writer"]["rows"] if "throughput_ratio_ci" in x]
    if not w:
        return ""
    rows = [
        [
            x["workload"],
            x["journal"],
            x["sync"],
            x["rounds"],
            ci_text(x["throughput_ratio_paired"], x["throughput_ratio_ci"]),
            verdict(x["throughput_ratio_ci"], TARGETS["throughput_ratio"], True),
            ci_text(x["p99_ratio_paired"], x["p99_ratio_ci"]),
            verdict(x["p99_ratio_ci"], TARGETS["p99_ratio"], False),
            ci_text(x.get("shim_throughput_ratio_paired"), x.get("shim_throughput_ratio_ci")),
            ci_text(x.get("shim_p99_ratio_paired"), x.get("shim_p99_ratio_ci")),
        ]
        for x in w
    ]
    return (
        "\nThe targets mode by mode, from the per-round ratios (each round runs the arms back to "
        "back): their median and a distribution-free 90 % confidence interval for it (order "
        "statistics). *met*: the whole interval is on the target's side; *missed*: the whole "
        "interval is on the wrong side; *within noise*: the rounds cannot tell. The shim's "
        "ratios, which should be 1, show how wide the noise is.\n\n"
        + table(
            [
                "workload",
                "journal",
                "sync",
                "rounds",
                "throughput ratio [90 % CI]",
                "≥ 0.97",
                "p99 ratio [90 % CI]",
                "≤ 1.10",
                "shim throughput ratio [90 % CI]",
                "shim p99 ratio [90 % CI]",
            ],
            rows,
        )
    )


def writer_cpu(r):
    """The writer thread's CPU time per transaction (per row for bulk), same runs as above."""
    w = r["writer"]["rows"]
    if not any(x["plain"].get("cpu_us") for x in w):
        return ""
    rows = [
        [
            x["workload"],
            x["journal"],
            x["sync"],
            x["plain"].get("cpu_us"),
            (x["shim"] or {}).get("cpu_us"),
            (x.get("threaded") or {}).get("cpu_us"),
            x["spool"].get("cpu_us"),
            (x["elsewhere"] or {}).get("cpu_us"),
            x.get("shim_cpu_ratio"),
            x.get("threaded_cpu_ratio"),
            x.get("cpu_ratio"),
            x.get("elsewhere_cpu_ratio"),
            pct(x["spool"].get("consumer_cpu_share")),
        ]
        for x in w
    ]
    return (
        "\nCPU time of the writer thread (user + system, `CLOCK_THREAD_CPUTIME_ID`) per "
        "transaction (small) or row (bulk), same runs: it leaves out time spent waiting (fsync, a "
        "descheduled vCPU), so it isolates what the extension adds to the application's own "
        "thread with less noise than throughput.\n\n"
        + table(
            [
                "workload",
                "journal",
                "sync",
                "plain µs",
                "shim µs",
                "shim + thread µs",
                "spool µs",
                "backup elsewhere µs",
                "shim ratio",
                "shim + thread ratio",
                "spool ratio",
                "backup elsewhere ratio",
                "consumer CPU % of a core (spool)",
            ],
            rows,
        )
    )


def pct(share):
    return None if share is None else share * 100


def not_run(data, title):
    """A section's text when it did not run: "" when absent, a one-line note when skipped (with
    its reason); None when it ran."""
    if not data:
        return ""
    if "skipped" in data:
        return f"\n{title}: skipped ({data['skipped']}).\n"
    return None


def instructions(r):
    ins = r.get("instructions")
    note = not_run(ins, "Instructions per transaction")
    if note is not None:
        return note
    rows = [
        [
            x["journal"],
            x["sync"],
            x["instr_per_txn"]["unix"],
            x["instr_per_txn"]["passthru"],
            x["instr_per_txn"].get("passthru-thread"),
            x["instr_per_txn"]["spool"],
            x["shim_ratio"],
            x.get("threaded_ratio"),
            x["spool_ratio"],
            x["spool_extra"],
        ]
        for x in ins["rows"]
    ]
    return (
        "\nInstructions the writer thread executes per small transaction (callgrind, "
        f"{ins['rows'][0]['txns']:,} transactions per arm; exact and repeatable, unlike times; the "
        "consumer thread is not included):\n\n"
        + table(
            [
                "journal",
                "sync",
                "plain",
                "shim",
                "shim + thread",
                "spool",
                "shim ratio",
                "shim + thread ratio",
                "spool ratio",
                "spool extra / txn",
            ],
            rows,
        )
    )


def writer_profile(r):
    prof = r.get("profile")
    note = not_run(prof, "Where the writer's time goes")
    if note is not None:
        return note
    med = prof["median_us_per_txn"]
    plain, threaded, spool = med["unix"], med["passthru-thread"], med["spool"]
    rows = [
        [
            label,
            plain[k],
            threaded[k],
            spool[k],
            threaded[k] - plain[k],
            spool[k] - plain[k],
            pct((spool[k] - plain[k]) / plain["total"]) if plain["total"] else None,
        ]
        for k, label in [*prof["parts"], ("total", "**total**")]
    ]
    return (
        "\nWhere the writer thread's CPU time goes, small WAL NORMAL transactions (`perf record`, "
        f"cpu-clock; {prof['txns']:,} transactions per arm, median of {prof['reps']} interleaved "
        "rounds; us per transaction, setup included). Sampled on a shared VM: read differences "
        "of a few percent of the total as noise. The *spool - plain* column says which parts "
        "capture makes slower, and the *shim + thread* column which of those a background thread "
        "in the process (with its own descriptor table, as spoolvfs's consumer) pays by itself:\n\n"
        + table(
            [
                "part",
                "plain us",
                "shim + thread us",
                "spool us",
                "shim + thread - plain",
                "spool - plain",
                "spool - plain, % of plain total",
            ],
            rows,
        )
    )


def freshness(r):
    rows = [
        [
            x["journal"],
            x["rate"],
            x["achieved_rate"],
            x["lag_p50_ms"],
            x["lag_p99_ms"],
            x["lag_max_ms"],
            x["status_lag_ms_max"],
            x["batches_per_s"],
            x["applied_mb_s"],
            x["consumer_cpu_pct"],
            x["busy_polls_pct"],
        ]
        for x in r["lag"]["rows"]
    ]
    c = r["config"]
    out = (
        f"One 200 B row per transaction, synchronous=NORMAL, {c['lag_seconds']:g} s per arm "
        f"after a {c['lag_warmup']:g} s warm-up that the statistics skip, medians of "
        f"{c['lag_reps']} (max: worst). Lag = first seen by a plain read-only reader of the "
        "backup − commit time.\n\n"
    )
    out += table(
        [
            "journal",
            "target txn/s",
            "achieved",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "spool_status lag_ms max",
            "batches/s",
            "applied MB/s",
            "consumer CPU %",
            "polls finding the backup locked %",
        ],
        rows,
    )
    ramp = [
        [
            j,
            x["max_sustained_rate"],
            x["limited_by"],
            " → ".join(
                f"{s['rate'] or 'unpaced'}{' (again)' if s.get('attempt') == 2 else ''}: "
                f"{s['achieved_rate']:.0f}/s p99 {s['lag_p99_ms']:.1f} ms"
                for s in x["steps"]
            ),
        ]
        for j, x in r["ramp"].items()
    ]
    sporadic = r.get("sporadic")
    if sporadic:
        out += (
            f"\nSporadic commits, one every {1 / sporadic['rate']:g} s (longer than the consumer "
            "stays awake after its last record, so every commit finds it parked), from the "
            "consumer's own process and from another process (a second process opened the "
            "database first and holds the active consumer); interleaved:\n\n"
        )
        out += table(
            ["journal", "committed by", "commits", "lag p50 ms", "lag max ms"],
            [
                [x["journal"], x["committer"], x["txns"], x["lag_p50_ms"], x["lag_max_ms"]]
                for x in sporadic["rows"]
            ],
        )
    return (
        out
        + "\nMaximum sustained commit rate (keeps up = lag p99 < 100 ms):\n\n"
        + table(["journal", "max sustained txn/s", "limited by", "steps"], ramp)
    )


def consumer(r):
    rows = [
        [
            x["journal"],
            x["sync"],
            x["applied_mb"],
            x.get("apply_busy_s"),
            x["apply_mb_s"],
            x["cpu_s_per_gb"],
            x["drain_s"],
        ]
        for x in r["consumer"]
    ]
    return (
        "Apply MB/s = page bytes applied / the consumer's busy time for them (`spool_status` "
        "`apply_ms`: from reading the batches out of the spool through the backup's last fsync). "
        "*End of COMMIT → synced* is what an application waiting with `spool_sync()` sees; in WAL "
        "mode it is near zero because COMMIT itself returns only after the autocheckpoint it "
        "triggers, during which the consumer applies.\n\n"
        + table(
            [
                "journal",
                "sync",
                "applied MB",
                "consumer busy s",
                "apply MB/s",
                "consumer CPU s/GB",
                "end of COMMIT → synced s",
            ],
            rows,
        )
    )


def memory(r):
    rows = [
        [
            x["journal"],
            x["txn_mb"],
            x["plain_peak_mb"],
            x["spool_peak_mb"],
            x["overhead_mb"],
            x["plain_txn_s"],
            x["spool_txn_s"],
            x["spool_sync_s"],
        ]
        for x in r["rss"]["rows"]
    ]
    return table(
        [
            "journal",
            "txn MB",
            "plain peak RSS MB",
            "spool peak RSS MB",
            "overhead MB",
            "plain txn s",
            "spool txn s",
            "spool end of COMMIT → synced s",
        ],
        rows,
    )


def incremental(r):
    i = r["incr"]
    rows = [
        [
            f"{x['frac'] * 100:g} %",
            x["method"],
            x["wall_ms"],
            x["times_spool"],
            mb(x["rchar"]),
            mb(x["wchar"]),
            mb(x["read_bytes"]),
            mb(x["write_bytes"]),
            x.get("pages_applied"),
            mb(x.get("written_est")),
        ]
        for x in i["rows"]
    ]
    size = i["db"]["pages"] * i["db"]["page_size"] / 1e6
    return (
        f"Database {size:.0f} MB ({i['db']['pages']:,} pages); spool's first open compared "
        f"source and backup in {i['seed']['seed_s']:.1f} s (once per process). Bytes from "
        "/proc io of the process doing the work (spool: the consumer thread); rchar/wchar "
        "include page-cache hits and sqlite3_rsync's pipe traffic.\n\n"
        + table(
            [
                "changed",
                "method",
                "wall ms",
                "× spool",
                "rchar MB",
                "wchar MB",
                "read_bytes MB",
                "write_bytes MB",
                "pages applied",
                "spool est. written MB",
            ],
            rows,
        )
    )


def continuous(r):
    c = r["cont"]
    rows = [
        [
            x["method"],
            x["finished"],
            x["wall_ms"],
            x["steps"],
            x["restarts"],
            x["writer_p99_ms"],
            x["p99_vs_alone"],
            x.get("lag_p99_ms"),
        ]
        for x in c["rows"]
    ]
    return (
        f"Writer: {c['rate']} txn/s, WAL, synchronous=NORMAL, in its own process; each copy "
        f"has a {c['budget_s']:g} s budget. Writer p99 over the copy's run (alone/spool: the "
        "whole run).\n\n"
        + table(
            [
                "method",
                "finished",
                "wall ms",
                "steps",
                "restarts",
                "writer p99 ms",
                "p99 × alone",
                "backup lag p99 ms",
            ],
            rows,
        )
    )


def render(r):
    parts = [
        "# spoolvfs benchmark results\n",
        header(r),
        "## Targets (reported, not asserted)\n",
        targets(r),
        "## At a glance\n",
        glance(r),
        "## 7. Machine limits\n",
        machine_limits(r),
        "## 1. Writer cost: plain unix VFS vs spool\n",
        writer(r),
        "## 2. Freshness: backup lag at a paced rate (poller outside, ~1 ms)\n",
        freshness(r),
        "## 3. Consumer: applying a bulk transaction to the backup\n",
        consumer(r),
        "## 4. Memory: one huge transaction\n",
        memory(r),
        "## 5. Bringing a backup up to date after a change\n",
        incremental(r),
        "## 6. Under continuous writes\n",
        continuous(r),
    ]
    notes = r["skipped"] + r["notes"]
    if notes:
        parts += ["## Skipped and scaled\n", "".join(f"- {n}\n" for n in notes)]
    return "\n".join(parts)


def plot(r, path):
    """Writer throughput (plain vs spool, unpaced) and backup lag over time (unpaced, and paced
    at 2,000 txn/s), 100 ms buckets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for vfs, label in (("unix", "plain unix VFS"), ("spool", "spool")):
        t = r["timeline"][vfs]["timeline"]
        s = t["bucket_ms"] / 1000
        full = t["txns"][:-1]  # the last bucket is cut short by the end of the run
        top.plot([i * s for i in range(len(full))], [n / s for n in full], label=label)
    top.set_ylabel("commits / s")
    top.set_title("Unpaced writer, one 200 B row per transaction, WAL, synchronous=NORMAL")
    top.legend()
    t = r["timeline"]["spool"]["timeline"]
    s = t["bucket_ms"] / 1000
    bottom.plot(
        [i * s for i in range(len(t["lag_max_ms"]))],
        t["lag_max_ms"],
        label="unpaced: worst lag in bucket (external poller)",
    )
    bottom.plot(t["status_t_s"], t["status_lag_ms"], ".", label="unpaced: spool_status() lag_ms")
    paced = [
        x
        for x in r["lag"]["raw"]
        if x.get("timeline") and x["target_rate"] == 2000 and x["journal"] == "wal"
    ]
    if paced:
        t = paced[0]["timeline"]
        s = t["bucket_ms"] / 1000
        bottom.plot(
            [i * s for i in range(len(t["lag_max_ms"]))],
            t["lag_max_ms"],
            label="2,000 txn/s paced: worst lag in bucket",
        )
    bottom.set_ylabel("backup lag, ms")
    bottom.set_xlabel("seconds")
    bottom.legend()
    fig.suptitle(f"spoolvfs {r['mode']} run, {r['machine']['cpu']}, {r['machine']['nproc']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results, out):
    out = Path(out)
    (out / "results.md").write_text(
        render(results) + "\n![throughput and lag](throughput_lag.png)\n"
    )
    plot(results, out / "throughput_lag.png")


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    write(json.loads(src.read_text()), src.parent)
