"""Fixtures for the spoolvfs end-to-end suite.

Environment:
  SPOOLVFS_LIB    path of the built extension (default: target/release/libspoolvfs.so)
  SPOOLVFS_SEED   base seed of every randomized test (default: random, printed in the header
                  and in every assertion message that depends on it)
  SPOOLVFS_STEPS  workload steps per randomized case (default: 120)
  SPOOLVFS_FAULT_LIB  the fault-injection build (`cargo build --release --features fault-inject
                  --target-dir target/faults`; default: target/faults/release/libspoolvfs.so),
                  loaded only by helper processes of test_faults.py
A missing or unloadable extension makes every test ERROR (never skip).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import spool_helpers as sh  # noqa: E402

BASE_SEED = int(os.environ.get("SPOOLVFS_SEED") or random.SystemRandom().randrange(1 << 32))
STEPS = int(os.environ.get("SPOOLVFS_STEPS", "120"))
C_DIR = sh.REPO_ROOT / "c"
C_BUILD = sh.REPO_ROOT / "target" / "c"


def pytest_report_header(config):
    return [f"spoolvfs: lib={sh.lib_path()} SPOOLVFS_SEED={BASE_SEED} SPOOLVFS_STEPS={STEPS}"]


@pytest.fixture(scope="session")
def spoolvfs() -> Path:
    """Path of the extension, loaded (permanently) into this process's apsw SQLite."""
    path = sh.lib_path()
    if not path.is_file():
        pytest.fail(f"{path} does not exist: run `cargo build --release` or set SPOOLVFS_LIB")
    try:
        sh.load_spoolvfs(path)
    except Exception as exc:  # apsw.ExtensionLoadingError and friends
        pytest.fail(f"loading {path} failed: {exc!r}")
    return path


@pytest.fixture
def seed(request) -> int:
    """Per-test seed derived from SPOOLVFS_SEED and the test id: a failure replays exactly."""
    return random.Random(f"{BASE_SEED}:{request.node.nodeid}").randrange(1 << 32)


@pytest.fixture
def rng(seed) -> random.Random:
    return random.Random(seed)


@pytest.fixture
def repro(request, seed) -> str:
    """Text for assertion messages: how to replay this exact case."""
    nodeid = request.node.nodeid
    return f"seed={seed}; replay: SPOOLVFS_SEED={BASE_SEED} python -m pytest '{nodeid}'"


@pytest.fixture
def connections(spoolvfs):
    """Track apsw connections and close them at teardown (the last close drains the spool)."""
    opened = []

    def open_(*args, **kwargs):
        con = sh.open_spool(*args, **kwargs)
        opened.append(con)
        return con

    yield open_
    for con in reversed(opened):
        try:
            con.close()
        except Exception:
            pass


@pytest.fixture
def procs():
    """Start helper processes; any still running at teardown are killed (by their own pid)."""
    started: list[subprocess.Popen] = []

    def start(args, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
        p = subprocess.Popen([str(a) for a in args], **kwargs)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def _build_c(name: str) -> Path:
    src, out = C_DIR / f"{name}.c", C_BUILD / name
    newest_source = max(src.stat().st_mtime, (C_DIR / "spoolvfs.h").stat().st_mtime)
    if not out.exists() or out.stat().st_mtime < newest_source:
        C_BUILD.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", out, src, "-lsqlite3"], check=True
        )
    return out


@pytest.fixture(scope="session")
def spool_writer_bin(spoolvfs) -> Path:
    """The C driver c/spool_writer.c (scripts/test.sh builds it; rebuilt here when stale)."""
    return _build_c("spool_writer")


@pytest.fixture
def child_env(spoolvfs) -> dict:
    """Environment for helper processes: they load the same extension."""
    env = dict(os.environ)
    env["SPOOLVFS_LIB"] = str(spoolvfs)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def fault_lib() -> Path:
    """Path of the fault-injection build. Missing, or built without the feature: ERROR (never
    skip), since the fault tests would otherwise prove nothing."""
    path = sh.fault_lib_path()
    if not path.is_file():
        pytest.fail(
            f"{path} does not exist: run `cargo build --release --features fault-inject "
            "--target-dir target/faults` or set SPOOLVFS_FAULT_LIB"
        )
    if b"SPOOLVFS_FAULTS_FILE" not in path.read_bytes():
        pytest.fail(f"{path} was built without `--features fault-inject`")
    return path


@pytest.fixture
def fault_env(child_env, fault_lib, tmp_path) -> dict:
    """Environment for helper processes that load the fault build; faults are read from the file
    `env["SPOOLVFS_FAULTS_FILE"]` (created empty: no fault active)."""
    faults = tmp_path / "faults"
    faults.write_text("")
    return dict(child_env, SPOOLVFS_LIB=str(fault_lib), SPOOLVFS_FAULTS_FILE=str(faults))
