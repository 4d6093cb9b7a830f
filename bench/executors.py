"""Where a table's cells run: one seam, `Executor.run(tasks)`, yielding each cell's outcome
as it finishes; the driver (bench.runner) writes it.

- `Serial`: in this process, one after another (`--jobs 1`, and the simplest case).
- `DaskExecutor.local(jobs)`: N worker processes on this machine (`--jobs N`).
- `DaskExecutor.connect(address)`: a running Dask cluster (`--scheduler ADDRESS`).
- `OnDemand(jobs)`: a profile's default (bench.profiles.Profile.local_jobs): up to N
  local workers, started only once the driver knows which cells are left to compute.

The driver hands the cluster one cell per free worker thread, in grid order, so a partial
run fills the table from its start. Dask reschedules a cell whose worker died (up to
`retries` times, then reports it failed with the cluster's error), and the driver
resubmits a cell the cluster cancelled without an error (its client lost the scheduler,
e.g. across a suspend); what a system raises comes back as a failed cell, not retried,
as in a serial run. A system with `uses_gpu` asks for one `GPU` worker resource when some
worker offers one, so CPU-only cells never wait for a GPU.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bench.cells import (
    RUN_TOKEN,
    CellError,
    CellOutput,
    CellTask,
    LocalProtocol,
    ProtocolBundle,
    compute_cell,
    compute_remote,
    on_every_core,
)
from protocols.errors import OptionError
from protocols.store import atomic_write_text

Outcome = CellOutput | CellError
RETRIES = 2  # a cell whose worker dies runs at most 1 + RETRIES times
POLL_S = 0.5
CONNECT_TIMEOUT_S = 30
START_TIMEOUT_S = 300  # local workers import nothing heavy before their first cell


class Progress:
    """One bar for the whole grid: cells done (cached or computed), running, failed."""

    def __init__(self, total: int, desc: str):
        self.bar = tqdm(total=total, desc=desc, unit="cell")
        self.done = self.failed = self.running = 0

    def _show(self) -> None:
        self.bar.set_postfix_str(f"done {self.done}, running {self.running}, "
                                 f"failed {self.failed}", refresh=True)

    def set_running(self, n: int) -> None:
        if n != self.running:
            self.running = n
            self._show()

    def finished(self, ok: bool, n: int = 1) -> None:
        if ok:
            self.done += n
        else:
            self.failed += n
        self.bar.update(n)
        self._show()

    def close(self) -> None:
        self.bar.close()


class Executor:
    """Runs cell tasks; `run` yields (index into tasks, outcome) in completion order."""

    name = "serial"

    def run(self, tasks: Sequence[CellTask], progress: Progress
            ) -> Iterator[tuple[int, Outcome]]:
        raise NotImplementedError

    def prepare(self, workdir: Path) -> str | None:
        """Called by the driver before tasks are made; returns the run token tasks carry."""
        return None

    def expect(self, tasks: Sequence[CellTask]) -> None:
        """Called by the driver with the cells to compute, before `run`."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            with _quiet_logs():
                self.close()
        else:
            self.close()


class Serial(Executor):
    def run(self, tasks: Sequence[CellTask], progress: Progress
            ) -> Iterator[tuple[int, Outcome]]:
        for i, task in enumerate(tasks):
            progress.set_running(1)
            outcome = compute_cell(task, LocalProtocol(task.protocol))
            progress.set_running(0)
            yield i, outcome


def _visible_gpus() -> list[str]:
    """The CUDA devices this machine shows the harness (CUDA_VISIBLE_DEVICES order)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _local_config() -> dict[str, Any]:
    """Dask settings of a local cluster, held while it runs (a Nanny reads some of them
    again whenever it restarts a dead worker)."""
    # Workers inherit this process's thread settings (Dask would pin OMP/MKL/OpenBLAS to 1
    # thread, which a serial run does not do), so they compute the serial run's numbers;
    # and its malloc: Dask's MALLOC_TRIM_THRESHOLD_=65536 hands every freed tensor buffer
    # back to the OS, so the next one page-faults in again (BENCHMARKS.md, "Parallel cells").
    config: dict[str, Any] = {f"distributed.nanny.pre-spawn-environ.{k}": None
                              for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                        "OPENBLAS_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")}
    # no progress bars from the workers' cells beside the grid's: tqdm reads TQDM_* when it
    # is imported, and a spawned worker imports it (re-importing the `run` process's main
    # module) before the Nanny applies its `env`, so it goes in before the spawn
    config["distributed.nanny.pre-spawn-environ.TQDM_DISABLE"] = "1"
    # no task queued behind another on a busy worker (the driver submits cells one per
    # free thread anyway: cells depend on scattered data, so they are not root tasks,
    # which is all this setting governs)
    config["distributed.scheduler.worker-saturation"] = 1.0
    # a cell may start processes of its own (vLLM's engine core, a DataLoader's workers),
    # which Python refuses in a daemonic process
    config["distributed.worker.daemon"] = False
    # Dask's periodic work takes the GIL from a cell's thread: the worker's profiler walks
    # the running task's stack every 10 ms, and each server checks its event loop every
    # 20 ms. With them, Gemma-3-270M scored 1.21x slower in a worker on 2 cores, and a full
    # training step ran 1.28x slower than in the main process (1.02-1.04x without; BENCHMARKS.md,
    # "Why an LLM cell ran slower in a worker").
    config["distributed.worker.profile.enabled"] = False
    config["distributed.admin.tick.interval"] = "1s"
    config["distributed.admin.system-monitor.interval"] = "60s"
    return config


def _local_cluster(jobs: int, retries: int) -> Any:
    """N single-threaded worker processes on 127.0.0.1 (no dashboard, no memory limit: an
    LLM cell may need most of the machine). With G GPUs, worker i sees GPU i mod G and the
    first G workers offer a `GPU` resource, so GPU cells run one per GPU. Call it inside
    `dask.config.set(_local_config())`."""
    import logging

    from distributed import Nanny, Scheduler, SpecCluster

    gpus = _visible_gpus()
    workers = {}
    for i in range(jobs):
        env = {"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {}
        workers[f"local-{i}"] = {"cls": Nanny, "options": {
            "nthreads": 1, "memory_limit": 0, "host": "127.0.0.1", "env": env,
            "resources": {"GPU": 1} if i < len(gpus) else None,
            "silence_logs": logging.ERROR}}
    scheduler = {"cls": Scheduler, "options": {
        "host": "127.0.0.1", "dashboard": False, "dashboard_address": None,
        "allowed_failures": retries}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """No log records while a cluster the user interrupted closes: its workers took the
    Ctrl-C too (a terminal sends it to them all), and Dask would log each broken
    connection with a traceback; the interrupt itself is the one line to show."""
    before = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(before)


@contextmanager
def _ctrl_c_held() -> Iterator[list[int]]:
    """Hold a Ctrl-C that comes while local workers start until they have (seconds),
    then let it through: a cluster interrupted half-started cannot be closed, and Dask's
    exit handler prints a traceback trying. Yields the signals held."""
    held: list[int] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield held
        return
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _restore_environ(saved: dict[str, str]) -> None:
    """A Nanny sets its spawn environment (PYTHONHASHSEED, ...) in the
    process that runs it, here the driver, at each (re)start of its worker: undo that."""
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


def _write_token(workdir: Path) -> str:
    """Write a fresh token into the artifact cache; a worker that cannot read it does not
    share the driver's storage and refuses to compute."""
    token = uuid.uuid4().hex
    atomic_write_text(Path(workdir) / RUN_TOKEN, token + "\n")
    return token


def check_address(address: str) -> None:
    """Refuse a --scheduler address Dask cannot connect to, before trying: a scheme it
    does not speak (http://), or no port (a bare host name)."""
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.registry import get_backend

    hint = "give the scheduler's address as tcp://HOST:PORT (`dask scheduler` prints it)"
    try:
        scheme, location = parse_address(address)
    except (ValueError, TypeError):
        raise OptionError(f"--scheduler {address!r} is not an address; {hint}") from None
    try:
        get_backend(scheme)
    except ValueError:
        raise OptionError(f"--scheduler {address}: Dask does not speak {scheme}://; "
                          f"{hint}") from None
    if scheme == "inproc":
        raise OptionError(f"--scheduler {address}: an inproc:// scheduler is reachable "
                          f"only inside its own process; {hint}")
    try:
        host, port = parse_host_port(location)
    except ValueError:
        raise OptionError(f"--scheduler {address} names no port; {hint}") from None
    if not host or not 0 < int(port) < 65536:
        raise OptionError(f"--scheduler {address} names no host or a port outside "
                          f"1-65535; {hint}")


def _handshake(address: str, timeout: float) -> None:
    """Connect to `address` and complete Dask's handshake, all within `timeout` seconds
    (Dask bounds only the TCP connect: a server that accepts and never answers, like a
    web server, would hold `Client()` until it closes). Runs on its own event loop, in a
    thread, so that it works from a caller that has a loop running."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.comm import connect

    async def probe() -> None:
        # Dask's own bound on the TCP connect is shorter, so that a refused connection
        # says so; the handshake after it has the rest
        comm = await asyncio.wait_for(connect(address, timeout=round(0.8 * timeout, 3)), timeout)
        await comm.close()

    with ThreadPoolExecutor(1, thread_name_prefix="dask-handshake") as pool:
        try:
            pool.submit(asyncio.run, probe()).result()
        except TimeoutError:
            raise OptionError(
                f"cannot reach the Dask scheduler at {address}: no Dask handshake within "
                f"{timeout:g} s (something that is not a Dask scheduler listens there, or "
                "nothing answers); expected the address of a running `dask scheduler` (it "
                "prints it, e.g. tcp://10.0.0.5:8786)") from None
        except Exception as e:  # refused, reset, or garbage where a Dask message belongs
            cause = f" ({type(e.__cause__).__name__})" if e.__cause__ is not None else ""
            text = " ".join(f"{type(e).__name__}: {e}{cause}".split())[:200]
            raise OptionError(
                f"cannot reach the Dask scheduler at {address} ({text}); expected the address "
                "of a running `dask scheduler`: start it, or check --scheduler") from None


class DaskExecutor(Executor):
    """Cells as Dask tasks; the protocol files are scattered once and travel to workers."""

    def __init__(self, client: Any, cluster: Any = None, retries: int = RETRIES,
                 name: str = "dask", environ: dict[str, str] | None = None,
                 settings: Any = None):
        self.client, self.cluster, self.retries, self.name = client, cluster, retries, name
        self._environ, self._settings = environ, settings

    @classmethod
    def local(cls, jobs: int, retries: int = RETRIES) -> DaskExecutor:
        import dask
        from distributed import Client

        saved = dict(os.environ)
        settings = dask.config.set(_local_config())
        executor = None
        try:
            with _ctrl_c_held() as pressed:
                cluster = _local_cluster(jobs, retries)
                try:
                    client = Client(cluster, set_as_default=False)
                    client.wait_for_workers(jobs, timeout=START_TIMEOUT_S)
                except BaseException:
                    cluster.close()
                    raise
                executor = cls(client, cluster, retries, f"{jobs} local worker processes",
                               saved, settings)
            if pressed:
                raise KeyboardInterrupt
        except BaseException as e:
            if executor is not None:  # a Ctrl-C pressed while they started, delivered now
                executor.__exit__(type(e))
            else:
                settings.__exit__(None, None, None)
            _restore_environ(saved)
            raise
        _restore_environ(saved)
        return executor

    @classmethod
    def connect(cls, address: str, retries: int = RETRIES,
                timeout: float | None = None) -> DaskExecutor:
        """A client of the scheduler at `address`, after checking the address's form and
        that a Dask scheduler answers there within `timeout` (default CONNECT_TIMEOUT_S):
        something else listening at the address fails at once, not after Dask's waits."""
        from distributed import Client

        timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
        check_address(address)
        _handshake(address, timeout)
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise OptionError(f"cannot reach the Dask scheduler at {address} ({e}); start it "
                              "(`dask scheduler`) or check --scheduler") from None
        return cls(client, None, retries, f"the Dask cluster at {address}")

    def prepare(self, workdir: Path) -> str:
        return _write_token(workdir)

    def _running(self, keys: set[str]) -> int:
        """This run's cells being computed: those a worker holds, at most one per thread
        (a worker may hold queued tasks too)."""
        try:
            processing = self.client.processing()
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # a progress count is not worth failing the run for
            return 0
        return sum(min(sum(1 for k in ks if k in keys),
                       workers.get(w, {}).get("nthreads", 1))
                   for w, ks in processing.items())

    def _slots(self) -> tuple[int, int]:
        """(worker threads, GPUs) the cluster offers now: how many cells may be in flight,
        and how many of them GPU cells (at least one cell, so that a cluster that is still
        starting its workers gets work)."""
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # asked again at the next poll
            return 1, 0
        threads = sum(w.get("nthreads", 1) for w in workers.values())
        gpus = sum(int(w.get("resources", {}).get("GPU", 0)) for w in workers.values())
        return max(1, threads), gpus

    def run(self, tasks: Sequence[CellTask], progress: Progress
            ) -> Iterator[tuple[int, Outcome]]:
        """Cells go to the cluster in grid order, one per free worker thread (a GPU cell
        when a GPU is free): a partial run fills the table from its start, and a queued
        cell sits here, where a worker's death cannot count against it. A cell the cluster
        lost without an error (the client lost its scheduler, e.g. across a suspend)
        goes back to the front of the queue, at most `retries` times."""
        from distributed import as_completed

        if not tasks:
            return
        bundles: dict[str, Any] = {}
        gpu = self._slots()[1] > 0
        on_gpu = [gpu and getattr(t.cls, "uses_gpu", False) for t in tasks]
        run_id = uuid.uuid4().hex[:8]
        queue = deque(range(len(tasks)))  # grid order
        lost: Counter[int] = Counter()
        futures: dict[Any, int] = {}
        pending = as_completed(loop=self.client.loop)

        def submit(i: int) -> Any:
            t = tasks[i]
            # scattered when first needed, and again if a reconnect cancelled it;
            # replicated on every worker: a dead worker takes none with it
            if bundles.get(t.protocol) is None or bundles[t.protocol].status != "finished":
                bundles[t.protocol] = self.client.scatter(ProtocolBundle.read(t.protocol),
                                                          hash=False, broadcast=True)
            return self.client.submit(
                compute_remote, t, bundles[t.protocol], pure=False, retries=self.retries,
                key=f"cell-{run_id}-{i}-{lost[i]}-{t.system}-{t.dataset}-{t.setting}-{t.seed}",
                resources={"GPU": 1} if on_gpu[i] else None)

        while queue or futures:
            if queue:
                threads, gpus = self._slots()
                busy_gpus = sum(on_gpu[i] for i in futures.values())
                while queue and len(futures) < threads:
                    # one GPU cell goes out even with no GPU worker now: Dask holds it
                    # until one joins
                    i = next((i for i in queue if not on_gpu[i] or busy_gpus < max(gpus, 1)),
                             None)
                    if i is None:
                        break
                    queue.remove(i)
                    try:
                        f = submit(i)
                    except Exception as e:  # the cluster is gone: say so for this cell
                        yield i, self._unsubmitted(e)
                        continue
                    futures[f] = i
                    busy_gpus += on_gpu[i]
                    pending.add(f)
            ready = pending.next_batch(block=False)
            if not ready:
                progress.set_running(self._running({f.key for f in futures}))
                time.sleep(POLL_S)
                continue
            for f in ready:
                i = futures.pop(f)
                if f.status in ("cancelled", "lost") and lost[i] < self.retries:
                    lost[i] += 1
                    queue = deque(sorted([i, *queue]))
                    continue
                yield i, self._outcome(f)
        progress.set_running(0)

    @staticmethod
    def _unsubmitted(exc: BaseException) -> CellError:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        return CellError(f"the cluster did not take this cell: {text}"[:300],
                         f"{type(exc).__name__}: {exc}\n(submitting the cell failed: is the "
                         "Dask scheduler still running?)\n")

    @staticmethod
    def _outcome(future: Any) -> Outcome:
        if future.status == "finished":
            return future.result()
        import traceback

        exc = future.exception()
        if exc is None:  # lost, not raised: e.g. its workers stopped answering (a suspend)
            text = (f"the cluster lost this cell (its task is {future.status!r}, with no "
                    "error): its worker died or stopped answering; rerun to compute it")
            return CellError(text, text + "\n")
        text = " ".join(f"{type(exc).__name__}: {exc}".split())
        tb = "".join(traceback.format_tb(future.traceback())) if future.traceback() else ""
        return CellError(text[:300], f"{tb}{type(exc).__name__}: {exc}\n"
                         "(the cluster gave up on this cell: its worker died or it raised "
                         "outside the system's code)")

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            try:
                if self.cluster is not None:
                    self.cluster.close()
            finally:
                if self._settings is not None:
                    self._settings.__exit__(None, None, None)
                if self._environ is not None:
                    _restore_environ(self._environ)


class OnDemand(Executor):
    """A profile's default of up to `jobs` local workers, sized to the work: one per cell
    that can run beside another, none unless two can. A cell on every CPU core (an LLM
    row) runs alone anyway (bench.cells.machine_cores), so a cached run, a one-cell run or
    a table of LLM rows only runs here, as `Serial`, without the workers' start-up and
    their memory."""

    def __init__(self, jobs: int, retries: int = RETRIES):
        self.jobs, self.retries = jobs, retries
        self.inner: Executor = Serial()
        self.name = self.inner.name

    def prepare(self, workdir: Path) -> str:
        return _write_token(workdir)

    def expect(self, tasks: Sequence[CellTask]) -> None:
        workers = min(self.jobs, sum(not on_every_core(t) for t in tasks))
        if workers > 1 and isinstance(self.inner, Serial):
            self.inner = DaskExecutor.local(workers, self.retries)
            self.name = self.inner.name

    def run(self, tasks: Sequence[CellTask], progress: Progress
            ) -> Iterator[tuple[int, Outcome]]:
        return self.inner.run(tasks, progress)

    def close(self) -> None:
        self.inner.close()


def _check(jobs: int, retries: int) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise OptionError(f"--jobs must be an integer >= 1, got {jobs!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise OptionError(f"--retries must be an integer >= 0, got {retries!r}")


def make_executor(jobs: int | None = 1, scheduler: str | None = None,
                  retries: int = RETRIES, default_jobs: int = 1) -> Executor:
    """`--jobs N` / `--scheduler ADDRESS` as an executor (checked first). `jobs=None`: the
    profile's `default_jobs` local workers (`OnDemand`), or this process for 1."""
    if jobs is None and scheduler is None and default_jobs > 1:
        _check(default_jobs, retries)
        return OnDemand(default_jobs, retries)
    jobs = 1 if jobs is None else jobs
    _check(jobs, retries)
    if scheduler is not None:
        if jobs != 1:
            raise OptionError("--jobs and --scheduler exclude each other: --jobs starts "
                              "local workers, --scheduler uses a cluster's")
        return DaskExecutor.connect(scheduler, retries)
    if jobs == 1:
        return Serial()
    return DaskExecutor.local(jobs, retries)
