"""A table's cells in parallel (bench.executors): local worker processes (`--jobs`) and a
Dask cluster (`--scheduler`) give the serial run's scores byte for byte, survive a worker
killed mid-cell, build a shared artifact once, and send GPU cells to GPU workers only.
Every cluster listens on 127.0.0.1 and is shut down by its test."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bench import profiles, registry
from bench.api import System
from bench.cells import (
    CellError,
    CellTask,
    ProtocolBundle,
    _threads,
    compute_remote,
    machine_cores,
)
from bench.cli import main
from bench.executors import DaskExecutor, OnDemand, Serial, make_executor
from bench.runner import run_table
from protocols.errors import HarnessError, OptionError
from protocols.store import Store

QUIET = {"log": lambda s: None}


def _in_worker() -> bool:
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


class _SelfKilling(System):
    """On its first attempt inside a Dask worker, SIGKILLs that worker in the middle of
    building an artifact; the retried cell builds it whole and scores with it."""

    name = "SelfKilling"

    def fit(self, data, valid):
        attempts = Path(self.workdir) / "selfkilling.attempts"
        with open(attempts, "a") as f:
            f.write(f"{os.getpid()}\n")
        first = len(attempts.read_text().split()) == 1

        def build(out):
            np.save(out / "w.npy", np.zeros(3))  # half of it
            if first and _in_worker():
                os.kill(os.getpid(), signal.SIGKILL)
            np.save(out / "w.npy", np.random.default_rng(self.seed).random(30))

        self.w = np.load(Store(self.workdir).ensure("selfkilling", {"v": 1}, build) / "w.npy")

    def score(self, requests):
        return np.tile(self.w, (len(requests), 1))


class _SharedA(System):
    """Trains (slowly) an artifact that _SharedB needs too; counts its trainings."""

    name = "SharedA"

    def fit(self, data, valid):
        def train(out):
            with open(Path(self.workdir) / "shared.trainings", "a") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(3)  # long enough for the other cell to ask for it meanwhile
            np.save(out / "w.npy", np.frombuffer(os.urandom(240), dtype=np.float64))

        self.w = np.load(Store(self.workdir).ensure("shared", {"v": 1}, train) / "w.npy")

    def score(self, requests):
        return np.tile(self.w, (len(requests), 1))


class _SharedB(_SharedA):
    name = "SharedB"


class _OnGPU(_SharedA):
    name = "OnGPU"
    uses_gpu = True

    def fit(self, data, valid):
        self.w = np.arange(30.0)


class _OnCPU(_OnGPU):
    name = "OnCPU"
    uses_gpu = False


class _FitFails(_OnCPU):
    name = "FitFails"

    def fit(self, data, valid):
        with open(Path(self.workdir) / "fitfails.attempts", "a") as f:
            f.write(f"{os.getpid()}\n")
        raise RuntimeError("out of memory (simulated)")


class _Forking(_OnCPU):
    """Starts a process of its own, as vLLM's engine does (a daemonic worker cannot)."""

    name = "Forking"

    def fit(self, data, valid):
        import multiprocessing

        child = multiprocessing.get_context("spawn").Process(target=os.getpid)
        child.start()
        child.join(60)
        assert child.exitcode == 0
        super().fit(data, valid)


TO_COMPUTE = ("waiting", "queued", "no-worker", "processing")  # a scheduler's task states


class _Queued(_OnCPU):
    """Logs, as it starts, its seed and how many of this run's cells the scheduler then
    holds to compute; takes 0.2-0.8 s, so that cells finish out of grid order."""

    name = "Queued"

    def fit(self, data, valid):
        from distributed import get_client

        held = get_client().run_on_scheduler(  # to compute (finished ones linger a while)
            lambda dask_scheduler: sum(str(k).startswith("cell-") and ts.state in TO_COMPUTE
                                       for k, ts in dask_scheduler.tasks.items()))
        with open(Path(self.workdir) / "queued.log", "a") as f:
            f.write(f"{self.seed} {held}\n")
        time.sleep(0.2 * (1 + (self.seed * 7) % 4))
        super().fit(data, valid)
        self.w = self.w + self.seed


@pytest.fixture()
def test_systems(monkeypatch):
    for cls in (_SelfKilling, _SharedA, _SharedB, _OnGPU, _OnCPU, _FitFails, _Forking,
                _Queued):
        monkeypatch.setitem(registry.BUILTIN, cls.name, f"{__name__}:{cls.__qualname__}")


@contextmanager
def cluster(**workers):
    """A Dask cluster on 127.0.0.1, one worker process per name (single-threaded unless
    its options say otherwise); the environment a Nanny changes here is put back."""
    from distributed import Nanny, Scheduler, SpecCluster

    saved = dict(os.environ)
    specs = {name: {"cls": Nanny, "options": {"nthreads": 1, "host": "127.0.0.1",
                                               "memory_limit": 0, **(options or {})}}
             for name, options in workers.items()}
    sched = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False,
                                           "dashboard_address": None}}
    try:
        with SpecCluster(workers=specs, scheduler=sched) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _until(cond, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _scores(out: Path) -> dict[str, bytes]:
    """The warm table's scores (the shared serial run also holds test_end_to_end's cold
    cells)."""
    return {str(p.relative_to(out)): p.read_bytes()
            for p in sorted((out / "cells").glob("*/warm/*/seed-*/scores.jsonl"))}


def _same_scores(serial: Path, parallel: Path) -> None:
    a, b = _scores(serial), _scores(parallel)
    assert len(a) == len(profiles.DEFAULT_SYSTEMS)
    assert sorted(a) == sorted(k for k in b if k in a)
    different = [k for k in a if a[k] != b[k]]
    assert not different, f"scores differ from the serial run's: {different}"


@pytest.mark.slow
def test_jobs_2_gives_the_serial_scores(smoke_warm_serial, tmp_path):
    serial, _ = smoke_warm_serial
    res = run_table("warm", "smoke", tmp_path, jobs=2, **QUIET)
    assert not res.failures
    _same_scores(serial, tmp_path)
    timing = {p.parent.parent.name: json.loads(p.read_text())
              for p in tmp_path.rglob("timing.json")}
    assert {t["worker"] for t in timing.values()} == {"local-0", "local-1"}
    for name, t in timing.items():  # an LLM cell on every CPU core has the machine to itself
        if registry.resolve(name).multithreaded and _threads(True) > 1:
            beside = [n for n, u in timing.items()
                      if n != name and u["start"] < t["end"] and t["start"] < u["end"]]
            assert not beside, f"{name} ran beside {beside}"


@pytest.mark.slow
def test_a_cluster_gives_the_serial_scores_though_a_worker_is_killed(
        smoke_warm_serial, tmp_path, test_systems):
    serial, _ = smoke_warm_serial
    with cluster(a=None, b=None) as c:
        res = run_table("warm", "smoke", tmp_path, scheduler=c.scheduler_address,
                        systems=[*profiles.DEFAULT_SYSTEMS, "SelfKilling"], **QUIET)
    assert not res.failures, [f.line() for f in res.failures]
    _same_scores(serial, tmp_path)
    attempts = (tmp_path / "cache" / "selfkilling.attempts").read_text().split()
    assert len(attempts) == 2, "killed once, then retried on a live worker"
    cell = tmp_path / "cells" / "ml-100k" / "warm" / "SelfKilling" / "seed-0"
    first = json.loads((cell / "scores.jsonl").read_text().splitlines()[0])["scores"]
    assert first == np.random.default_rng(0).random(30).tolist(), "the whole artifact"
    assert not list(tmp_path.rglob("*.partial-*"))


def test_cells_that_share_an_artifact_train_it_once(tmp_path, test_systems, capsys):
    out = tmp_path / "out"
    rc = main(["run", "--table", "warm", "--profile", "smoke", "--systems", "SharedA,SharedB",
               "--out", str(out), "--jobs", "2"])
    assert rc == 0
    assert len((out / "cache" / "shared.trainings").read_text().split()) == 1
    a, b = (json.loads((out / "cells" / "ml-100k" / "warm" / s / "seed-0" / "scores.jsonl")
                       .read_text().splitlines()[0])["scores"] for s in ("SharedA", "SharedB"))
    assert a == b, "both cells used the one artifact (random bytes: two trainings differ)"
    workers = {json.loads(p.read_text())["worker"] for p in out.rglob("timing.json")}
    assert workers == {"local-0", "local-1"}, "the two cells ran at the same time"
    assert "done 2, running 0, failed 0" in capsys.readouterr().err


def test_gpu_cells_run_only_where_a_gpu_is_offered(tmp_path, test_systems):
    with cluster(gpu={"resources": {"GPU": 1}}, cpu=None) as c:
        res = run_table("warm", "smoke", tmp_path, scheduler=c.scheduler_address,
                        systems=["OnGPU", "OnCPU"], seeds=[0, 1, 2, 3], **QUIET)
    assert not res.failures and len(res.results) == 8
    ran = {}
    for p in tmp_path.rglob("timing.json"):
        ran.setdefault(p.parent.parent.name, set()).add(json.loads(p.read_text())["worker"])
    assert ran["OnGPU"] == {"gpu"}


def test_a_failing_system_is_reported_not_retried(tmp_path, test_systems):
    res = run_table("warm", "smoke", tmp_path, systems=["Random", "FitFails", "Forking"],
                    jobs=2, **QUIET)
    assert sorted(r.system for r in res.results) == ["Forking", "Random"]
    (failure,) = res.failures
    assert failure.error == "RuntimeError: out of memory (simulated)"
    assert "Traceback" in failure.traceback and "in fit" in failure.traceback
    assert len((tmp_path / "cache" / "fitfails.attempts").read_text().split()) == 1


def test_a_cell_on_every_core_waits_for_the_others_and_goes_first(tmp_path):
    base, events = tmp_path / "cores", []

    def hold(exclusive, name, release):
        with machine_cores(exclusive, base):
            events.append(f"{name}+")
            release.wait(30)
            events.append(f"{name}-")

    def gate_taken():
        fd = os.open(f"{base}.gate", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    go = {n: threading.Event() for n in "AXB"}
    threads = {n: threading.Thread(target=hold, args=(n == "X", n, go[n])) for n in "AXB"}
    threads["A"].start()  # a single-threaded cell is running
    _until(lambda: events == ["A+"])
    threads["X"].start()  # an every-core cell waits for it, holding the gate
    _until(gate_taken)
    threads["B"].start()  # so a second single-threaded cell does not start meanwhile
    for n in "AXB":
        go[n].set()
        threads[n].join(30)
    assert events == ["A+", "A-", "X+", "X-", "B+", "B-"]


def test_a_worker_with_two_threads_refuses(tmp_path):
    """Two cells in one process would share torch's random state: the run stops."""
    with cluster(w={"nthreads": 2}) as c, pytest.raises(HarnessError, match="--nthreads 1"):
        run_table("warm", "smoke", tmp_path, scheduler=c.scheduler_address,
                  systems=["Random"], **QUIET)
    assert not (tmp_path / "cells").exists()


def test_a_worker_without_the_drivers_storage_refuses(tmp_path, protocol_dirs):
    task = CellTask("warm", "ml-100k", "warm", "Random", 0, "smoke",
                    registry.resolve("Random"), {}, "k", str(protocol_dirs["warm"]),
                    str(tmp_path / "elsewhere"), token="abc")
    out = compute_remote(task, ProtocolBundle.read(protocol_dirs["warm"]))
    assert isinstance(out, CellError) and out.harness
    assert "does not see the driver's artifact cache" in out.error


def test_parallel_options_are_checked_first(tmp_path):
    for bad in ({"jobs": 0}, {"jobs": 2, "scheduler": "tcp://127.0.0.1:1"}, {"retries": -1}):
        with pytest.raises(OptionError):
            make_executor(**bad)
    with pytest.raises(OptionError, match="cannot reach the Dask scheduler"):
        DaskExecutor.connect("tcp://127.0.0.1:1", timeout=2)
    assert main(["run", "--table", "warm", "--jobs", "0", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("memory_per_job", "cores", "memory", "jobs"), [
    (None, 16, 128.0, 1),   # a profile without a measured gain: one process
    (8, 2, 23.5, 2),        # this machine: both cores
    (8, 16, 60.0, 7),       # memory decides
    (8, 1, 64.0, 1),        # one core
    (8, 4, 6.0, 1),         # less memory than one worker needs: still one
    (8, 4, None, 1),        # memory unknown: one
])
def test_a_profiles_default_jobs_follow_cores_and_memory(memory_per_job, cores, memory, jobs,
                                                         monkeypatch):
    prof = replace(profiles.get("cpu"), jobs_memory_gib=memory_per_job)
    monkeypatch.setattr(profiles, "cpu_cores", lambda: cores)
    monkeypatch.setattr(profiles, "memory_gib_total", lambda: memory)
    assert prof.local_jobs() == jobs


def test_only_the_cpu_profile_defaults_to_several_jobs(capsys):
    assert profiles.get("cpu").local_jobs(cores=2, memory_gib=23.5) == 2
    for name in ("smoke", "paper"):  # smoke: 1.18x slower with --jobs 2 (BENCHMARKS.md)
        assert profiles.get(name).local_jobs(cores=64, memory_gib=512.0) == 1
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "cpu: one per core, at most one per" in shown and "smoke and paper: 1" in shown


def test_the_default_jobs_start_workers_only_for_two_cells_or_more(tmp_path, monkeypatch):
    """Without --jobs a profile's default starts at most one worker per cell to compute,
    and none for a run with one cell or none (it runs in this process)."""
    monkeypatch.setitem(profiles.PROFILES, "smoke",
                        replace(profiles.get("smoke"), jobs_memory_gib=1e-6))
    monkeypatch.setattr(profiles, "cpu_cores", lambda: 3)
    lines: list[str] = []

    def workers(out: Path) -> dict[str, Any]:
        return {p.parent.parent.name: json.loads(p.read_text())["worker"]
                for p in out.rglob("timing.json")}

    run_table("warm", "smoke", tmp_path / "one", systems=["Random"], log=lines.append)
    assert workers(tmp_path / "one") == {"Random": None}, "one cell: in this process"
    run_table("warm", "smoke", tmp_path / "two", systems=["Random", "Pop"], log=lines.append)
    assert set(workers(tmp_path / "two").values()) == {"local-0", "local-1"}, \
        "two cells: two workers of the three the default allows"
    assert any("2 of 2 cells to compute on 2 local worker processes (the smoke profile's "
               "default" in line for line in lines)
    lines.clear()
    run_table("warm", "smoke", tmp_path / "two", systems=["Random", "Pop"], log=lines.append)
    assert not any("worker" in line for line in lines), "all cached: no workers started"
    with pytest.raises(OptionError):
        make_executor(None, retries=-1, default_jobs=2)
    assert isinstance(make_executor(None, default_jobs=1), Serial)


def test_the_default_jobs_leave_cells_on_every_core_to_this_process(monkeypatch):
    """LLM cells on the CPU run one at a time anyway (the machine-wide lock): workers
    start only for two cells or more that can run side by side."""
    monkeypatch.delenv("MOLOREC_BENCH_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # every core = 2, on any machine
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # LLM cells on the CPU
    started = []
    monkeypatch.setattr(DaskExecutor, "local",
                        lambda jobs, retries: started.append(jobs) or Serial())
    llm, small = (SimpleNamespace(cls=registry.resolve(n)) for n in ("Backbone", "Random"))
    for tasks, workers in (([llm] * 5, []), ([llm] * 5 + [small], []),
                           ([llm, small, small, small], [3]), ([small] * 9, [3])):
        started.clear()
        executor = make_executor(None, default_jobs=3)
        assert isinstance(executor, OnDemand)
        executor.expect(tasks)
        assert started == workers, (tasks, started)


def test_a_cell_the_cluster_lost_says_so():
    """A future that ended without an exception (its workers stopped answering) is
    reported as lost, not as "NoneType: None"."""
    class Lost:
        status = "lost"

        def exception(self):
            return None

        def traceback(self):
            return None

    out = DaskExecutor._outcome(Lost())
    assert "lost this cell" in out.error and "'lost'" in out.error
    assert "NoneType" not in out.error + out.traceback


def _started(out: Path) -> list[tuple[int, int]]:
    """(seed, cells the scheduler held) per start of a _Queued cell, in start order."""
    path = out / "cache" / "queued.log"
    lines = path.read_text().split("\n") if path.exists() else []
    return [tuple(map(int, line.split())) for line in lines if line]


def test_cells_go_to_the_cluster_in_grid_order_one_per_free_worker(tmp_path, test_systems):
    """A partial run fills the table from its start: no cell waits queued on a worker
    (where work stealing would reorder it, and a worker's death would count against it)."""
    seeds = list(range(6))
    with cluster(a=None, b=None) as c:
        res = run_table("warm", "smoke", tmp_path, scheduler=c.scheduler_address,
                        systems=["Queued"], seeds=seeds, **QUIET)
    assert not res.failures and len(res.results) == len(seeds)
    started = _started(tmp_path)
    assert sorted(s for s, _ in started) == seeds
    assert max(held for _, held in started) <= 2, f"more cells than workers: {started}"
    for k, (seed, _) in enumerate(started):  # two at once may start either way round
        assert abs(seed - k) <= 1, f"out of grid order: {started}"


def test_cells_cancelled_by_a_lost_scheduler_connection_are_resubmitted(
        tmp_path, test_systems, monkeypatch):
    """Across a suspend the client loses its scheduler, reconnects and cancels every
    future; the run resubmits those cells and completes them."""
    import bench.runner

    made = []

    def keep(*args):
        made.append(make_executor(*args))
        return made[-1]

    monkeypatch.setattr(bench.runner, "make_executor", keep)
    aborted = threading.Event()

    def abort_once_a_cell_runs():
        _until(lambda: bool(_started(tmp_path / "out")), 120)
        made[0].client.scheduler_comm.comm.abort()
        aborted.set()

    with cluster(a=None, b=None) as c:
        watcher = threading.Thread(target=abort_once_a_cell_runs, daemon=True)
        watcher.start()
        res = run_table("warm", "smoke", tmp_path / "out", scheduler=c.scheduler_address,
                        systems=["Queued", "Random"], seeds=[0, 1, 2], **QUIET)
        watcher.join(5)
    assert aborted.is_set()
    assert not res.failures, [f.line() for f in res.failures]
    assert len(res.results) == 6
    started = [s for s, _ in _started(tmp_path / "out")]
    assert len(started) > 3, f"some cell was computed again: {started}"
    for seed in (0, 1, 2):
        cell = tmp_path / "out" / "cells" / "ml-100k" / "warm" / "Queued" / f"seed-{seed}"
        first = json.loads((cell / "scores.jsonl").read_text().splitlines()[0])["scores"]
        assert first == (np.arange(30.0) + seed).tolist()


def _spawn_settings() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_local_workers_keep_the_drivers_thread_and_malloc_settings(monkeypatch):
    """Dask's nanny would pin OpenMP to 1 thread and set MALLOC_TRIM_THRESHOLD_=65536,
    with which CPU cells faulted their tensor buffers in again and again (BENCHMARKS.md,
    "Parallel cells"): `--jobs` workers inherit the driver's settings instead."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with DaskExecutor.local(1) as executor:
        settings = list(executor.client.run(_spawn_settings).values())
    assert settings == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "2"}]


def _periodic_work(dask_worker: Any) -> dict[str, float | None]:
    callbacks = dask_worker.periodic_callbacks
    return {name: callbacks[name].callback_time if name in callbacks else None
            for name in ("profile", "tick", "monitor")}


def test_local_workers_do_not_profile_their_cells():
    """The profiler's 10 ms stack samples and the 20 ms event-loop ticks took the GIL from
    LLM cells (Gemma scoring 1.21x slower; BENCHMARKS.md): `--jobs` workers run without
    the one and with the others slowed down."""
    with DaskExecutor.local(1) as executor:
        periodic = list(executor.client.run(_periodic_work).values())
    assert periodic == [{"profile": None, "tick": 1000.0, "monitor": 60000.0}]


BARS_SCRIPT = """
import io
import json

from bench.executors import DaskExecutor  # imports tqdm, as `python -m bench` does


def bars_disabled():
    from tqdm.auto import tqdm

    return tqdm(range(1), file=io.StringIO()).disable


if __name__ == "__main__":
    with DaskExecutor.local(1) as executor:
        print(json.dumps(list(executor.client.run(bars_disabled).values())))
"""


def test_local_workers_show_no_progress_bars(tmp_path):
    """The grid's bar is the run's only one: a worker's cells draw none, though a spawned
    worker imports tqdm (re-importing the driver's main module) before the Nanny applies
    the worker's environment."""
    script = tmp_path / "bars.py"
    script.write_text(BARS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]),
                                         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=300, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True]
