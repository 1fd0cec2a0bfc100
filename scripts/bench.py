"""Benchmark suite of spoolvfs (run through scripts/bench.sh; it builds what this needs).

Every number comes from c/bench.c (target/c/bench), a C driver linked with the system SQLite, one
process per arm; this script only schedules the arms, interleaves them (plain A, spool B, A, B, ...
in the same conditions, several repetitions), takes medians and ratios, and writes
bench/results.json, bench/results.md and bench/throughput_lag.png (through scripts/bench_report.py).
Nothing is asserted: each target of the issue is reported next to its measured ratio.
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_report  # noqa: E402

MODES = [("delete", "full"), ("delete", "normal"), ("wal", "full"), ("wal", "normal")]


@dataclass
class Config:
    """Sizes of one run. `quick` is a CI smoke run (~1-2 min), `full` the real one (~35-40 min)."""

    reps: int
    # Rounds for the arms that take about a second each (small WAL transactions, bulk loads):
    # more rounds narrow the confidence interval of their per-round ratios at little cost.
    reps_fast: int
    small_txns: int
    small_txns_wal: int
    small_warmup: int
    instr_txns: int
    profile_txns: int
    profile_reps: int
    bulk_rows: int
    lag_rates: list
    lag_seconds: float
    lag_warmup: float
    lag_reps: int
    sporadic_seconds: float
    sporadic_reps: int
    ramp_rates: list
    ramp_seconds: float
    timeline_seconds: float
    rss_mb: int
    rss_reps: int
    big_mb: int
    incr_fracs: list
    incr_reps: int
    cont_rate: int
    cont_budget: float
    cont_alone: float
    cont_reps: int
    disk_mb: int
    disk_fsyncs: int
    notes: list = field(default_factory=list)


CONFIGS = {
    "quick": Config(
        reps=2,
        reps_fast=2,
        small_txns=400,
        small_txns_wal=2000,
        small_warmup=50,
        instr_txns=200,
        profile_txns=2000,
        profile_reps=1,
        bulk_rows=20_000,
        lag_rates=[500, 2000],
        lag_seconds=1.0,
        lag_warmup=0.3,
        lag_reps=1,
        sporadic_seconds=4.5,
        sporadic_reps=1,
        ramp_rates=[1000, 4000, 16000, 0],
        ramp_seconds=1.0,
        timeline_seconds=1.5,
        rss_mb=10,
        rss_reps=1,
        big_mb=10,
        incr_fracs=[0.001, 0.01],
        incr_reps=1,
        cont_rate=500,
        cont_budget=1.5,
        cont_alone=1.0,
        cont_reps=1,
        disk_mb=64,
        disk_fsyncs=200,
    ),
    "full": Config(
        reps=5,
        reps_fast=15,
        small_txns=3000,
        small_txns_wal=30000,
        small_warmup=300,
        instr_txns=5000,
        profile_txns=100_000,
        profile_reps=5,
        bulk_rows=200_000,
        lag_rates=[500, 2000],
        lag_seconds=10.0,
        lag_warmup=1.0,
        lag_reps=3,
        sporadic_seconds=30.0,
        sporadic_reps=2,
        ramp_rates=[1000, 2000, 4000, 8000, 16000, 32000, 0],
        ramp_seconds=5.0,
        timeline_seconds=5.0,
        rss_mb=1024,
        rss_reps=2,
        big_mb=1024,
        incr_fracs=[0.001, 0.01],
        incr_reps=3,
        cont_rate=500,
        cont_budget=20.0,
        cont_alone=5.0,
        cont_reps=2,
        disk_mb=1024,
        disk_fsyncs=2000,
    ),
}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def paired_ratio(arm, base, get):
    """Median over rounds of arm/base within each round. Arms of one round run back to back, so
    a host whose speed drifts over minutes (other guests, steal) moves both sides of each ratio
    alike; the ratio of the medians mixes rounds run at different speeds."""
    return median(per_round_ratios(arm, base, get))


def per_round_ratios(arm, base, get):
    """arm/base of each round, in round order."""
    return [ratio(get(a), get(b)) for a, b in zip(arm, base, strict=False)]


def median_ci(values, confidence=0.90):
    """Distribution-free confidence interval of the median: the order statistics (k-th smallest,
    k-th largest) with the largest k whose coverage, from the binomial distribution of how many
    values fall below the true median, is still at least `confidence`. None with fewer than 5
    values (no interval reaches 90 % then: 5 values give 93.75 % for [min, max])."""
    values = sorted(v for v in values if v is not None)
    n = len(values)
    if n < 5:
        return None
    best = None
    for k in range(1, n // 2 + 1):
        outside = 2 * sum(math.comb(n, i) for i in range(k)) / 2**n
        if 1 - outside >= confidence:
            best = k
    return None if best is None else (values[best - 1], values[n - best])


def paired_ratio_ci(arm, base, get):
    """`paired_ratio`'s 90 % confidence interval (`median_ci`) over the per-round ratios."""
    return median_ci(per_round_ratios(arm, base, get))


def percentile(values, p):
    """Nearest-rank percentile, as c/bench.c computes it."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(p * len(values)) - 1))]


class Bench:
    """Runs c/bench.c subcommands with the snapshotted library; each returns its JSON result."""

    def __init__(self, exe, lib, work):
        self.exe, self.work = exe, Path(work)
        self.env = dict(os.environ, SPOOLVFS_LIB=str(Path(lib).resolve()))

    def run(self, *args, timeout=3600, env=None, cpu=None):
        """`cpu`: pin the process to that CPU."""
        out = subprocess.run(
            [self.exe, *map(str, args)],
            env=dict(self.env, **(env or {})),
            text=True,
            stdout=subprocess.PIPE,
            timeout=timeout,
            check=True,
            preexec_fn=None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu})),
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    def spawn(self, *args):
        return subprocess.Popen(
            [self.exe, *map(str, args)],
            env=self.env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def fresh(self, name):
        """An empty directory for one arm: every arm starts from new files."""
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


class LoadMeter:
    """How busy the machine was with OTHER work while a section ran: system-wide busy CPU time
    (/proc/stat) minus what this script and its (reaped) children used, as a share of all cores;
    and, apart from it, the time the hypervisor gave our vCPUs to other guests (steal), which no
    process here can see but which stretches every wall-clock figure of a VM. Numbers measured
    while others load the machine are noisy; this says how much."""

    def __init__(self):
        self.t, self.ours = time.monotonic(), self._ours()
        self.busy, self.steal = self._busy_and_steal()

    @staticmethod
    def _busy_and_steal():
        # user nice system idle iowait irq softirq steal ...: busy is what is neither idle nor
        # stolen.
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = sum(fields[:7]) - fields[3] - fields[4]
        return busy / tick, fields[7] / tick

    @staticmethod
    def _ours():
        s, c = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def result(self):
        wall = time.monotonic() - self.t
        busy, steal = self._busy_and_steal()
        other = (busy - self.busy) - (self._ours() - self.ours)
        cores = wall * os.cpu_count()
        return {
            "seconds": round(wall, 1),
            "loadavg": os.getloadavg()[0],
            "other_cpu_pct": round(max(0.0, 100 * other / cores), 1),
            "steal_pct": round(max(0.0, 100 * (steal - self.steal) / cores), 1),
        }


def section(results, name, fn, *args):
    """Run one measurement section, recording its result, its duration and the machine's load."""
    meter = LoadMeter()
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    results[name] = fn(*args)
    results["load"][name] = meter.result()
    print(
        f"bench: {name} done in {results['load'][name]['seconds']} s "
        f"(other load {results['load'][name]['other_cpu_pct']} %, "
        f"steal {results['load'][name]['steal_pct']} %)",
        file=sys.stderr,
        flush=True,
    )


# ------------------------------------------------------------------------------------------------
# 7. machine limits


def bench_disk(b, cfg):
    """Sequential write bandwidth and fsync latency of the disk holding the benchmark files: the
    ceiling for every other number (a synchronous=FULL commit cannot beat its fsyncs)."""
    return b.run("disk", b.fresh("disk"), cfg.disk_mb, cfg.disk_fsyncs)


def bench_corunner(b, cfg):
    """What any work on the other core costs a writer on this machine: the plain writer (small WAL
    NORMAL transactions, pinned to one CPU) alone and with a process busy-looping on another CPU,
    interleaved. A busy loop shares nothing with the writer but the hardware (on a VM, possibly a
    hyperthread sibling): its ratio is the price of a background thread's every busy cycle, which
    spool's consumer pays on the writer's behalf (its CPU share is in the writer table)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        cfg.notes.append("co-runner test skipped: fewer than 2 CPUs available")
        return None
    mine, other = cpus[0], cpus[1]
    raw = []
    for _ in range(cfg.reps):
        for arm in ("alone", "busy"):
            spinner = None
            if arm == "busy":
                spinner = subprocess.Popen(
                    [sys.executable, "-c", "while True: pass"],
                    preexec_fn=lambda: os.sched_setaffinity(0, {other}),
                )
            try:
                r = b.run(
                    "writer",
                    "unix",
                    "wal",
                    "normal",
                    "small",
                    cfg.small_txns_wal,
                    cfg.small_warmup,
                    b.fresh("corunner") / "db",
                    cpu=mine,
                )
            finally:
                if spinner:
                    spinner.kill()
                    spinner.wait()
            raw.append(dict(r, arm=arm))
    med = {
        arm: {
            "throughput": median([r["txn_per_s"] for r in raw if r["arm"] == arm]),
            "cpu_us": median([r["cpu_us_per_row"] for r in raw if r["arm"] == arm]),
        }
        for arm in ("alone", "busy")
    }
    return {
        "raw": raw,
        "alone": med["alone"],
        "busy": med["busy"],
        "throughput_ratio": ratio(med["busy"]["throughput"], med["alone"]["throughput"]),
        "cpu_ratio": ratio(med["busy"]["cpu_us"], med["alone"]["cpu_us"]),
    }


# ------------------------------------------------------------------------------------------------
# 1. writer cost (3. consumer throughput comes from the bulk spool arms)


# The writer arms: plain SQLite, a C shim that only forwards every call to unix (c/passthru.c: the
# floor of any design that observes SQLite through a VFS), the same shim in a process with one idle
# thread that has left the process's descriptor table as spoolvfs's consumer does (the floor of
# spoolvfs's design, a background worker in the application's process: glibc leaves its
# single-thread fast paths once a second thread exists), spoolvfs, and spoolvfs with its backup on
# another device. The last one separates what capture costs the writer (CPU) from what the
# backup's own fsyncs cost it when they queue on the application's disk. This VM has one disk, so
# a tmpfs stands in for the second device: the backup's writes and fsyncs then reach no disk.
THREADED = "passthru-thread"
ELSEWHERE = "spool-elsewhere"
SHIM_VFS = ("unix", "passthru", THREADED, "spool")
WRITER_VFS = (*SHIM_VFS, ELSEWHERE)
# Arms that run another VFS under extra environment: (VFS given to bench, environment).
ARM_RUN_AS = {THREADED: ("passthru", {"BENCH_IDLE_THREAD": "1"})}
ELSEWHERE_ROOT = Path("/dev/shm")


def elsewhere_dir(cfg):
    """Where the "elsewhere" arm puts its backup (created fresh per arm), or None when there is
    no tmpfs with room for the bulk arm's backup (container /dev/shm is often 64 MB)."""
    need_mb = 2 * cfg.bulk_rows * 230 // 1_000_000 + 64
    if not ELSEWHERE_ROOT.is_dir() or free_mb(ELSEWHERE_ROOT) < need_mb:
        return None
    return ELSEWHERE_ROOT / f"spoolvfs-bench-{os.getpid()}"


def run_writer(b, vfs, journal, sync, workload, n, warm, elsewhere):
    """One writer arm on fresh files; the elsewhere arm is `spool` with BENCH_BACKUP_DIR set."""
    d = b.fresh("writer")
    if vfs in ARM_RUN_AS:
        run_as, env = ARM_RUN_AS[vfs]
        r = b.run("writer", run_as, journal, sync, workload, n, warm, d / "db", env=env)
        return dict(r, vfs=vfs)
    if vfs != ELSEWHERE:
        return b.run("writer", vfs, journal, sync, workload, n, warm, d / "db")
    shutil.rmtree(elsewhere, ignore_errors=True)
    elsewhere.mkdir()
    try:
        r = b.run(
            "writer",
            "spool",
            journal,
            sync,
            workload,
            n,
            warm,
            d / "db",
            env={"BENCH_BACKUP_DIR": str(elsewhere)},
        )
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)  # tmpfs is memory
    return dict(r, vfs=ELSEWHERE)


def small_txns(cfg, journal):
    """WAL commits take microseconds, rollback ones milliseconds: equal run times, not counts."""
    return cfg.small_txns_wal if journal == "wal" else cfg.small_txns


def bench_writer(b, cfg):
    """Writer cost of spool vs plain: for each workload and mode, `reps` interleaved rounds of fresh
    arms (plain, passthru, passthru-thread, spool, plain, ...). Throughput and latency ratios are
    spool/plain of the medians: what a writer pays for the live backup; passthru/plain is what any
    VFS shim pays; passthru-thread/plain what any in-process design with a background thread pays
    before it captures anything; spool-elsewhere/plain is what capture alone costs when the backup
    has its own device."""
    raw = []
    elsewhere = elsewhere_dir(cfg)
    arms = WRITER_VFS if elsewhere else SHIM_VFS
    if not elsewhere:
        cfg.notes.append(f"{ELSEWHERE} writer arm skipped: no tmpfs at {ELSEWHERE_ROOT} with room")
    for workload in ("small", "bulk"):
        for journal, sync in MODES:
            if workload == "small":
                n, warm = small_txns(cfg, journal), cfg.small_warmup
            else:
                n, warm = cfg.bulk_rows, 0
            fast = workload == "bulk" or journal == "wal"
            for _ in range(cfg.reps_fast if fast else cfg.reps):
                for vfs in arms:
                    raw.append(run_writer(b, vfs, journal, sync, workload, n, warm, elsewhere))
    return {"raw": raw, "rows": summarize_writer(raw)}


def summarize_writer(raw):
    rows = []
    for workload in ("small", "bulk"):
        for journal, sync in MODES:
            arm = {
                vfs: [
                    r
                    for r in raw
                    if (r["workload"], r["journal"], r["sync"], r["vfs"])
                    == (workload, journal, sync, vfs)
                ]
                for vfs in WRITER_VFS
            }
            unit = "txn_per_s" if workload == "small" else "rows_per_s"
            med = {
                vfs: {
                    "throughput": median([r[unit] for r in rs]),
                    "p50_ms": median([r["txn_latency"]["p50_ms"] for r in rs]),
                    "p99_ms": median([r["txn_latency"]["p99_ms"] for r in rs]),
                    "cpu_us": median([r.get("cpu_us_per_row") for r in rs]),
                    "consumer_cpu_share": median([r.get("consumer_cpu_share") for r in rs]),
                }
                for vfs, rs in arm.items()
                if rs
            }
            away = med.get(ELSEWHERE, {})
            floor = med.get(THREADED, {})
            rows.append(
                {
                    "workload": workload,
                    "journal": journal,
                    "sync": sync,
                    "unit": unit,
                    "plain": med["unix"],
                    "shim": med["passthru"],
                    "spool": med["spool"],
                    "throughput_ratio": ratio(
                        med["spool"]["throughput"], med["unix"]["throughput"]
                    ),
                    "p50_ratio": ratio(med["spool"]["p50_ms"], med["unix"]["p50_ms"]),
                    "p99_ratio": ratio(med["spool"]["p99_ms"], med["unix"]["p99_ms"]),
                    "shim_throughput_ratio": ratio(
                        med["passthru"]["throughput"], med["unix"]["throughput"]
                    ),
                    "shim_p99_ratio": ratio(med["passthru"]["p99_ms"], med["unix"]["p99_ms"]),
                    "threaded": floor or None,
                    "threaded_throughput_ratio": ratio(
                        floor.get("throughput"), med["unix"]["throughput"]
                    ),
                    "threaded_p99_ratio": ratio(floor.get("p99_ms"), med["unix"]["p99_ms"]),
                    "threaded_cpu_ratio": ratio(floor.get("cpu_us"), med["unix"]["cpu_us"]),
                    "elsewhere": away or None,
                    "elsewhere_throughput_ratio": ratio(
                        away.get("throughput"), med["unix"]["throughput"]
                    ),
                    "elsewhere_p99_ratio": ratio(away.get("p99_ms"), med["unix"]["p99_ms"]),
                    "cpu_ratio": ratio(med["spool"]["cpu_us"], med["unix"]["cpu_us"]),
                    "throughput_ratio_paired": paired_ratio(
                        arm["spool"], arm["unix"], lambda r: r[unit]
                    ),
                    "p99_ratio_paired": paired_ratio(
                        arm["spool"], arm["unix"], lambda r: r["txn_latency"]["p99_ms"]
                    ),
                    "rounds": len(arm["spool"]),
                    "throughput_ratio_ci": paired_ratio_ci(
                        arm["spool"], arm["unix"], lambda r: r[unit]
                    ),
                    "p99_ratio_ci": paired_ratio_ci(
                        arm["spool"], arm["unix"], lambda r: r["txn_latency"]["p99_ms"]
                    ),
                    "shim_throughput_ratio_paired": paired_ratio(
                        arm["passthru"], arm["unix"], lambda r: r[unit]
                    ),
                    "shim_throughput_ratio_ci": paired_ratio_ci(
                        arm["passthru"], arm["unix"], lambda r: r[unit]
                    ),
                    "shim_p99_ratio_paired": paired_ratio(
                        arm["passthru"], arm["unix"], lambda r: r["txn_latency"]["p99_ms"]
                    ),
                    "shim_p99_ratio_ci": paired_ratio_ci(
                        arm["passthru"], arm["unix"], lambda r: r["txn_latency"]["p99_ms"]
                    ),
                    "shim_cpu_ratio": ratio(med["passthru"]["cpu_us"], med["unix"]["cpu_us"]),
                    "elsewhere_cpu_ratio": ratio(away.get("cpu_us"), med["unix"]["cpu_us"]),
                }
            )
    return rows


def bench_instructions(b, cfg):
    """CPU instructions the writer thread executes per small transaction, per VFS, counted by
    callgrind: unlike times, the counts repeat exactly whatever else the machine does, so they
    show the writer-side cost of capture without the noise of a shared 2-core VM. Counted: the
    benchmark's transaction function inclusive (BEGIN, INSERT, COMMIT and every VFS call beneath),
    divided by the transactions it ran; the consumer thread is not in the count (it is its own
    thread and has its own section)."""
    valgrind = shutil.which("valgrind")
    if not valgrind:
        return {"skipped": "valgrind is not installed"}
    rows = []
    for journal, sync in (("wal", "normal"), ("delete", "normal")):
        per_vfs = {}
        for vfs in SHIM_VFS:
            d = b.fresh("instr")
            out = d / "callgrind.out"
            warm = cfg.instr_txns // 10
            run_as, extra_env = ARM_RUN_AS.get(vfs, (vfs, {}))
            subprocess.run(
                [
                    valgrind,
                    "--tool=callgrind",
                    "--separate-threads=yes",
                    f"--callgrind-out-file={out}",
                    b.exe,
                    "writer",
                    run_as,
                    journal,
                    sync,
                    "small",
                    str(cfg.instr_txns),
                    str(warm),
                    str(d / "db"),
                ],
                env=dict(b.env, **extra_env),
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=3600,
            )
            per_vfs[vfs] = write_txn_instructions(out) / (cfg.instr_txns + warm)
        rows.append(
            {
                "journal": journal,
                "sync": sync,
                "txns": cfg.instr_txns,
                "instr_per_txn": per_vfs,
                "shim_ratio": ratio(per_vfs["passthru"], per_vfs["unix"]),
                "threaded_ratio": ratio(per_vfs[THREADED], per_vfs["unix"]),
                "spool_ratio": ratio(per_vfs["spool"], per_vfs["unix"]),
                "spool_extra": per_vfs["spool"] - per_vfs["unix"],
            }
        )
    return {"rows": rows}


def write_txn_instructions(out):
    """Inclusive instruction count of `write_txn` in the main thread's callgrind profile."""
    main_thread = Path(f"{out}-01")
    text = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(main_thread)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in text.splitlines():
        if line.rstrip().endswith("]") and ":write_txn " in line:
            return int(line.split()[0].replace(",", ""))
    raise RuntimeError(f"no write_txn in {main_thread}")


# Where the writer thread's time goes, by part, from perf samples: what each part costs per
# transaction, so that the difference spool - plain shows which parts capture makes slower.
PROFILE_ARMS = ("unix", THREADED, "spool")
PROFILE_PARTS = (
    ("sqlite", "SQLite's own code"),
    ("spoolvfs", "spoolvfs's code (forwarding, capture)"),
    ("copy", "libc memcpy/memmove (spool: the page copy into the spool mapping)"),
    ("libc", "the rest of libc (mutexes, system-call wrappers)"),
    ("kernel_files", "kernel: file lookups (fdget/fput; atomic while another thread shares the descriptor table)"),
    ("kernel", "kernel: the rest (SQLite's system calls, page faults, interrupts)"),
    ("other", "anything else (the benchmark driver, the C shim, the vDSO clock)"),
)


def profile_part(dso, sym):
    """The `PROFILE_PARTS` key of one sample of the writer thread."""
    if "kernel" in dso:
        files = ("fdget", "fput", "__fget", "__fput", "__fdget")
        return "kernel_files" if sym.startswith(files) else "kernel"
    if "libsqlite3" in dso:
        return "sqlite"
    if "libspoolvfs" in dso:
        return "spoolvfs"
    if "/libc." in dso or dso.startswith("libc."):
        return "copy" if sym.startswith(("__memmove", "__memcpy", "memcpy", "memmove")) else "libc"
    return "other"


def perf_writer_parts(perf, data, txns):
    """CPU microseconds per transaction of the writer (the process's main thread) by part."""
    text = subprocess.run(
        [perf, "script", "-i", str(data), "-F", "pid,tid,period,ip,sym,dso"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ns = dict.fromkeys((k for k, _ in PROFILE_PARTS), 0)
    for line in text.splitlines():
        fields = line.split(None, 3)
        if len(fields) < 4 or "/" not in fields[0]:
            continue
        pid, tid = fields[0].split("/")
        if pid != tid or not fields[1].isdigit():
            continue
        # fields: "PID/TID", period (ns), IP, "SYMBOL (DSO)"; symbols may contain spaces.
        sym, _, dso = fields[3].rpartition(" (")
        ns[profile_part(dso.rstrip(")"), sym.strip())] += int(fields[1])
    return {k: v / 1000 / txns for k, v in ns.items()}


def bench_profile(b, cfg):
    """Where the writer's CPU time goes (small WAL NORMAL transactions, the mode where capture is
    the largest share of a commit): `perf record` (cpu-clock) of each arm, `profile_reps`
    interleaved rounds, the main thread's samples split into `PROFILE_PARTS`. Per transaction,
    warm-up and setup included. Sampling is statistical and the VM is noisy, so only the
    medians over rounds are reported, and differences of less than a few percent of the total
    mean little."""
    perf = shutil.which("perf")
    if not perf:
        return {"skipped": "perf is not installed"}
    probe = subprocess.run(
        [perf, "record", "-q", "-e", "cpu-clock", "-o", os.devnull, "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return {"skipped": f"perf record does not work here: {probe.stderr.strip()[:200]}"}
    raw = []
    warm = cfg.small_warmup
    for _ in range(cfg.profile_reps):
        for vfs in PROFILE_ARMS:
            d = b.fresh("profile")
            data = d / "perf.data"
            run_as, extra_env = ARM_RUN_AS.get(vfs, (vfs, {}))
            args = ["writer", run_as, "wal", "normal", "small", cfg.profile_txns, warm, d / "db"]
            out = subprocess.run(
                [perf, "record", "-q", "-e", "cpu-clock", "-F", "4999", "-o", str(data), "--"]
                + [b.exe, *map(str, args)],
                env=dict(b.env, **extra_env),
                check=True,
                capture_output=True,
                text=True,
                timeout=3600,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            parts = perf_writer_parts(perf, data, cfg.profile_txns + warm)
            raw.append({"vfs": vfs, "txn_per_s": r["txn_per_s"], "us_per_txn": parts})
            data.unlink()
    med = {
        vfs: {
            k: median([r["us_per_txn"][k] for r in raw if r["vfs"] == vfs])
            for k, _ in PROFILE_PARTS
        }
        for vfs in PROFILE_ARMS
    }
    for parts in med.values():
        parts["total"] = sum(parts[k] for k, _ in PROFILE_PARTS)
    return {
        "journal": "wal",
        "sync": "normal",
        "txns": cfg.profile_txns,
        "reps": cfg.profile_reps,
        "parts": PROFILE_PARTS,
        "raw": raw,
        "median_us_per_txn": med,
    }


def summarize_consumer(writer):
    """Consumer apply throughput and CPU, from the drain after each bulk spool arm."""
    rows = []
    for journal, sync in MODES:
        cs = [
            r["consumer"]
            for r in writer["raw"]
            if r["vfs"] == "spool"
            and r["workload"] == "bulk"
            and (r["journal"], r["sync"]) == (journal, sync)
        ]
        rows.append(
            {
                "journal": journal,
                "sync": sync,
                "applied_mb": median([c["applied_mb"] for c in cs]),
                "drain_s": median([c["drain_s"] for c in cs]),
                "apply_busy_s": median([c.get("apply_busy_s") for c in cs]),
                "apply_mb_s": median([c["apply_mb_s"] for c in cs]),
                "cpu_s_per_gb": median([c["cpu_s_per_gb"] for c in cs]),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------
# 2. freshness


def run_lag(b, vfs, journal, sync, rate, seconds, warmup=0.0, timeline=False):
    """One paced-writer arm on fresh files; statistics skip the first WARMUP seconds."""
    d = b.fresh("lag")
    extra = ["--timeline", 100] if timeline else []
    return b.run(
        "lag", vfs, journal, sync, rate, seconds + warmup, d / "db", "--warmup", warmup, *extra
    )


def bench_lag(b, cfg):
    """Backup lag at steady paced rates, measured from outside by a poller of the backup (plain
    VFS, read-only, ~1 ms): p50/p99/max of first-seen minus commit time after a warm-up, next to
    what spool_status() itself says."""
    raw = []
    for rep in range(cfg.lag_reps):
        for journal in ("wal", "delete"):
            for rate in cfg.lag_rates:
                raw.append(
                    run_lag(
                        b,
                        "spool",
                        journal,
                        "normal",
                        rate,
                        cfg.lag_seconds,
                        cfg.lag_warmup,
                        timeline=rep == 0,
                    )
                )
    rows = []
    for journal in ("wal", "delete"):
        for rate in cfg.lag_rates:
            rs = [r for r in raw if r["journal"] == journal and r["target_rate"] == rate]
            rows.append(
                {
                    "journal": journal,
                    "sync": "normal",
                    "rate": rate,
                    "achieved_rate": median([r["achieved_rate"] for r in rs]),
                    "lag_p50_ms": median([r["lag"]["p50_ms"] for r in rs]),
                    "lag_p99_ms": median([r["lag"]["p99_ms"] for r in rs]),
                    "lag_max_ms": max(r["lag"]["max_ms"] for r in rs),
                    "status_lag_ms_max": max(r["status_lag_ms_max"] for r in rs),
                    "batches_per_s": median([r["batches"] / r["seconds"] for r in rs]),
                    "applied_mb_s": median([r["applied_mb_s"] for r in rs]),
                    "consumer_cpu_pct": median([r["consumer_cpu_pct"] for r in rs]),
                    "busy_polls_pct": median(
                        [100 * r["busy_polls"] / max(1, r["polls"]) for r in rs]
                    ),
                }
            )
    return {"raw": raw, "rows": rows}


#: Sporadic commits: one every 2 s, longer than the consumer stays awake after its last record
#: (STAY_AWAKE, 1 s), so every commit finds it parked.
SPORADIC_RATE = 0.5


def run_sporadic(b, journal, seconds, other_process):
    """One sporadic arm on fresh files. `other_process`: a `hold` process opens the database
    first, so its consumer is the active one and every commit comes from another process."""
    d = b.fresh("sporadic")
    holder = None
    if other_process:
        holder = b.spawn("hold", d / "db", journal)
        if holder.stdout.readline().strip() != "READY":
            raise RuntimeError("bench hold did not start")
    try:
        r = b.run("lag", "spool", journal, "normal", SPORADIC_RATE, seconds, d / "db")
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait(timeout=600)
    r["other_process"] = other_process
    return r


def bench_sporadic(b, cfg):
    """Backup lag of sporadic commits (one every 2 s): each finds the consumer parked, so this
    measures how it is woken, by a commit of its own process and by one of another process (the
    doorbell in the control file), interleaved."""
    raw = []
    for _ in range(cfg.sporadic_reps):
        for journal in ("wal", "delete"):
            for other in (False, True):
                raw.append(run_sporadic(b, journal, cfg.sporadic_seconds, other))
    rows = []
    for journal in ("wal", "delete"):
        for other in (False, True):
            rs = [r for r in raw if r["journal"] == journal and r["other_process"] == other]
            rows.append(
                {
                    "journal": journal,
                    "committer": "another process" if other else "the consumer's process",
                    "txns": sum(r["txns"] for r in rs),
                    "lag_p50_ms": median([r["lag"]["p50_ms"] for r in rs]),
                    "lag_max_ms": max(r["lag"]["max_ms"] for r in rs),
                }
            )
    return {"rate": SPORADIC_RATE, "raw": raw, "rows": rows}


def bench_ramp(b, cfg):
    """Highest commit rate the backup keeps up with: rates rise until the backup falls behind
    (lag p99 >= 100 ms, or still >= 100 ms behind when the writer stops) or the writer itself
    cannot go faster (rate 0 = unpaced, as fast as one thread commits). A step that fails is run
    once more before it counts: on a shared VM one stall of the host's disk (hundreds of ms, seen
    in busy runs) fails a 5 s step whatever the rate; a rate the backup cannot sustain fails
    twice. Both attempts are kept in `steps`."""
    out = {}
    for journal in ("wal", "delete"):
        steps, best, limit = [], None, "none: kept up with an unpaced writer"
        for rate in cfg.ramp_rates:
            for attempt in (1, 2):
                r = run_lag(b, "spool", journal, "normal", rate, cfg.ramp_seconds, cfg.lag_warmup)
                kept = r["lag"]["p99_ms"] < 100 and r["lag_ms_at_end"] < 100
                reached = rate == 0 or r["achieved_rate"] >= 0.9 * rate
                steps.append(ramp_step(rate, attempt, kept, r))
                if kept and reached:
                    break
            if not kept:
                limit = f"backup fell behind at {r['achieved_rate']:.0f} txn/s"
                break
            best = r["achieved_rate"]
            if not reached:
                limit = f"writer could not reach {rate} txn/s"
                break
        out[journal] = {"steps": steps, "max_sustained_rate": best, "limited_by": limit}
    return out


def ramp_step(rate, attempt, kept, r):
    return {
        "rate": rate,
        "attempt": attempt,
        "achieved_rate": r["achieved_rate"],
        "kept_up": kept,
        "lag_p99_ms": r["lag"]["p99_ms"],
        "lag_max_ms": r["lag"]["max_ms"],
        "lag_ms_at_end": r["lag_ms_at_end"],
        "consumer_cpu_pct": r["consumer_cpu_pct"],
    }


def bench_timeline(b, cfg):
    """Writer throughput and backup lag over time for the plot: an unpaced writer, plain then
    spool (WAL, synchronous=NORMAL), in 100 ms buckets."""
    return {
        vfs: run_lag(b, vfs, "wal", "normal", 0, cfg.timeline_seconds, timeline=True)
        for vfs in ("unix", "spool")
    }


# ------------------------------------------------------------------------------------------------
# 4. memory


def free_mb(path):
    return shutil.disk_usage(path).free // 1_000_000


def scaled_mb(cfg, b, want, per_mb, what):
    """WANT MB if the disk has room for per_mb bytes per MB (plus 2 GB of slack), else as much as
    fits, with a note saying so."""
    room = (free_mb(b.work) - 2000) // per_mb
    if room >= want:
        return want
    got = max(1, int(room))
    cfg.notes.append(
        f"{what}: scaled down from {want} MB to {got} MB, only {free_mb(b.work)} MB free"
    )
    return got


def bench_rss(b, cfg):
    """Peak RSS of a process doing ONE transaction of rss_mb MB, plain vs spool (which also waits
    until the backup has it): the memory the extension adds for a transaction bigger than any
    buffer. Needs ~4x the size on disk (source, journal/WAL, spool, backup)."""
    mb = scaled_mb(cfg, b, cfg.rss_mb, 4, "memory test")
    raw = []
    for journal in ("delete", "wal"):
        for _ in range(cfg.rss_reps):
            for vfs in ("unix", "spool"):
                raw.append(b.run("rss", vfs, journal, mb, b.fresh("rss") / "db"))
    shutil.rmtree(b.work / "rss", ignore_errors=True)
    rows = []
    for journal in ("delete", "wal"):
        peak = {
            vfs: median(
                [r["peak_rss_mb"] for r in raw if (r["vfs"], r["journal"]) == (vfs, journal)]
            )
            for vfs in ("unix", "spool")
        }
        rows.append(
            {
                "journal": journal,
                "txn_mb": mb,
                "plain_peak_mb": peak["unix"],
                "spool_peak_mb": peak["spool"],
                "overhead_mb": peak["spool"] - peak["unix"],
                "spool_txn_s": median(
                    [r["txn_s"] for r in raw if (r["vfs"], r["journal"]) == ("spool", journal)]
                ),
                "plain_txn_s": median(
                    [r["txn_s"] for r in raw if (r["vfs"], r["journal"]) == ("unix", journal)]
                ),
                "spool_sync_s": median(
                    [r["sync_s"] for r in raw if (r["vfs"], r["journal"]) == ("spool", journal)]
                ),
            }
        )
    return {"mb": mb, "raw": raw, "rows": rows}


# ------------------------------------------------------------------------------------------------
# 5. bringing a big backup up to date


COPY_METHODS = ["backup-all", "backup-step", "vacuum", "rsync"]


def copy_methods(rsync):
    return COPY_METHODS if rsync else COPY_METHODS[:-1]


def copy(b, method, src, d, rsync, budget=3600):
    """Bring d/METHOD.db up to date with SRC by METHOD, in a bench process of its own."""
    extra = ["--rsync", rsync] if method == "rsync" else []
    return b.run("copy", method, src, d / f"{method}.db", "--budget", budget, *extra)


def bench_incr(b, cfg, rsync):
    """Update a backup of a big_mb database after 0.1 % and 1 % of its pages changed (random rows
    in one transaction). spoolvfs: commit to spool_sync()==1, pages applied, consumer I/O. Others,
    each in a process of its own, against the state before the change: Online Backup API
    step(-1) and step(100) loop, VACUUM INTO a fresh file, sqlite3_rsync onto a replica. Methods
    rotate order every repetition; the page cache is warm for all of them."""
    mb = scaled_mb(cfg, b, cfg.big_mb, 6, "incremental test")
    d = b.fresh("big")
    db = d / "db"
    made = b.run("mkdb", db, mb)
    serve = b.spawn("serve", db)
    seed = json.loads(serve.stdout.readline())
    initial = {m: copy(b, m, db, d, rsync) for m in copy_methods(rsync)}
    raw = []
    methods = copy_methods(rsync)
    for rep in range(cfg.incr_reps):
        for frac in cfg.incr_fracs:
            serve.stdin.write(f"change {frac} {rep * 100 + int(frac * 1e5)}\n")
            serve.stdin.flush()
            raw.append(dict(json.loads(serve.stdout.readline()), method="spool"))
            k = rep % len(methods)
            for m in methods[k:] + methods[:k]:
                raw.append(dict(copy(b, m, db, d, rsync), frac=frac))
    serve.stdin.write("quit\n")
    serve.stdin.close()
    serve.wait()
    return {
        "db": made,
        "seed": seed,
        "initial": initial,
        "raw": raw,
        "rows": summarize_incr(raw, cfg.incr_fracs),
    }


def summarize_incr(raw, fracs):
    rows = []
    for frac in fracs:
        spool = [r for r in raw if r["method"] == "spool" and r["frac"] == frac]
        spool_ms = median([r["wall_ms"] for r in spool])
        for method in ["spool"] + COPY_METHODS:
            rs = [r for r in raw if r["method"] == method and r["frac"] == frac]
            if not rs:
                continue
            wall = median([r["wall_ms"] for r in rs])
            row = {
                "frac": frac,
                "method": method,
                "wall_ms": wall,
                "times_spool": ratio(wall, spool_ms),
            }
            for k in ("rchar", "wchar", "read_bytes", "write_bytes"):
                row[k] = median([r["io"][k] for r in rs])
            if method == "spool":
                row.update(
                    pages_applied=median([r["pages_applied"] for r in rs]),
                    written_est=median([r["written_est"] for r in rs]),
                )
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------
# 6. under continuous writes


def read_latencies(path):
    with open(path) as f:
        return [tuple(map(int, line.split())) for line in f]


def window_p99(lat, t0, t1):
    """p99 (ms) of the writer's transactions that started within [t0, t1]."""
    inside = [ns for start, ns in lat if t0 <= start <= t1]
    return (percentile(inside, 0.99) / 1e6 if inside else None), len(inside)


def cont_arm(b, cfg, db, vfs, method, rsync):
    """One arm: a paced writer process (cont_rate txn/s, WAL, synchronous=NORMAL) and, after 0.5 s,
    METHOD in another process (or nothing: the writer alone; or spool: the writer through spool).
    The writer's p99 is taken over the method's run."""
    lat_file = b.work / "cont-lat.txt"
    w = b.spawn(
        "lag",
        vfs,
        "wal",
        "normal",
        cfg.cont_rate,
        3 * cfg.cont_budget + 60,
        db,
        "--lat-file",
        lat_file,
        "--warmup",
        0.5,
    )
    assert w.stdout.readline().strip() == "READY"
    t_ready = time.monotonic_ns()
    time.sleep(0.5)
    res = {"method": method}
    if method in ("alone", "spool"):
        time.sleep(cfg.cont_alone)
    else:
        res.update(copy(b, method, db, db.parent, rsync, cfg.cont_budget))
    time.sleep(0.3)
    w.send_signal(signal.SIGUSR1)
    out, _ = w.communicate(timeout=600)
    writer = json.loads(out.strip().splitlines()[-1])
    t0, t1 = res.get("t_start_ns", t_ready + 500_000_000), res.get("t_end_ns", time.monotonic_ns())
    res["writer_p99_ms"], res["writer_txns"] = window_p99(read_latencies(lat_file), t0, t1)
    if vfs == "spool":
        res.update(
            lag_p99_ms=writer["lag"]["p99_ms"],
            lag_max_ms=writer["lag"]["max_ms"],
            final_sync_ms=writer["final_sync_ms"],
            resyncs=writer["status"]["resyncs"],
        )
    return res


def bench_cont(b, cfg, rsync, db):
    """Each method while a writer commits cont_rate txn/s into the big database: does it finish
    within cont_budget s (the step(100) loop restarts whenever the source changes: count), and
    what it does to the writer's commit latency p99 compared with the writer alone."""
    arms = [("unix", "alone"), ("spool", "spool")] + [("unix", m) for m in copy_methods(rsync)]
    raw = []
    for _ in range(cfg.cont_reps):
        for vfs, method in arms:
            raw.append(cont_arm(b, cfg, db, vfs, method, rsync))
    alone = median([r["writer_p99_ms"] for r in raw if r["method"] == "alone"])
    rows = []
    for _, method in arms:
        rs = [r for r in raw if r["method"] == method]
        row = {
            "method": method,
            "writer_p99_ms": median([r["writer_p99_ms"] for r in rs]),
            "finished": (
                f"{sum(r['finished'] for r in rs)}/{len(rs)}" if method in COPY_METHODS else None
            ),
            "wall_ms": median([r.get("wall_ms") for r in rs]),
            "restarts": median([r.get("restarts") for r in rs]),
            "steps": median([r.get("steps") for r in rs]),
        }
        row["p99_vs_alone"] = ratio(row["writer_p99_ms"], alone)
        if method == "spool":
            row.update(
                lag_p99_ms=median([r["lag_p99_ms"] for r in rs]),
                lag_max_ms=max(r["lag_max_ms"] for r in rs),
            )
        rows.append(row)
    return {"rate": cfg.cont_rate, "budget_s": cfg.cont_budget, "raw": raw, "rows": rows}


# ------------------------------------------------------------------------------------------------


def sh(*cmd):
    try:
        return subprocess.run(cmd, text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def disk(work):
    """Device, filesystem, size and free space of the filesystem holding WORK."""
    fields = sh("df", "-h", "--output=source,fstype,size,avail", str(work)).splitlines()[-1].split()
    if len(fields) != 4:
        return "?"
    return f"{fields[1]} on {fields[0]}, {fields[2]} ({fields[3]} free)"


def machine(b, work):
    """What the numbers were measured on, and with which builds."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    info = b.run("info")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "disk": disk(work),
        "kernel": platform.release(),
        "sqlite": info["sqlite"],
        "spoolvfs": info["spoolvfs"],
        "commit": sh("git", "describe", "--always", "--dirty"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=CONFIGS, default="full")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rsync", default="")
    ap.add_argument("--rsync-note", default="")
    ap.add_argument("--command", default="scripts/bench.sh")
    args = ap.parse_args()
    cfg = CONFIGS[args.mode]
    b = Bench(args.bin, args.lib, args.work)
    rsync = args.rsync or None
    results = {
        "mode": args.mode,
        "command": args.command,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(b, args.work),
        "config": asdict(cfg),
        "load": {},
        "skipped": [] if rsync else [f"sqlite3_rsync: {args.rsync_note}"],
    }
    overall = LoadMeter()
    section(results, "disk", bench_disk, b, cfg)
    section(results, "corunner", bench_corunner, b, cfg)
    section(results, "writer", bench_writer, b, cfg)
    section(results, "instructions", bench_instructions, b, cfg)
    section(results, "profile", bench_profile, b, cfg)
    results["consumer"] = summarize_consumer(results["writer"])
    section(results, "lag", bench_lag, b, cfg)
    section(results, "sporadic", bench_sporadic, b, cfg)
    section(results, "ramp", bench_ramp, b, cfg)
    section(results, "timeline", bench_timeline, b, cfg)
    section(results, "rss", bench_rss, b, cfg)
    section(results, "incr", bench_incr, b, cfg, rsync)
    section(results, "cont", bench_cont, b, cfg, rsync, b.work / "big" / "db")
    shutil.rmtree(b.work / "big", ignore_errors=True)
    results["load"]["overall"] = overall.result()
    results["notes"] = cfg.notes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    bench_report.write(results, out)
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
