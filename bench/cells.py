"""One cell as a unit of work that can run anywhere: a picklable task in, the cell's files
as text out.

The driver (bench.runner) decides what runs, then writes and verifies what comes back;
a worker (bench.executors) only computes. So workers need no write access to `cells/`, a
worker that dies mid-cell leaves no cell behind, and the serial run is the same function
called in the driver's own process. What a worker does write is the artifact cache
(`task.workdir`, protocols.store: built once per key, under a lock, renamed into place).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bench.api import ScoreRequest, System, check_scores
from bench.results import CELL_FORMAT, full_metric_values, jsonl_text, metric_rows, rows_of
from bench.seeding import seed_everything
from protocols.digest import text_sha256
from protocols.errors import HarnessError
from protocols.files import ProtocolFiles, load_protocol, protocol_files
from protocols.options import DEFAULT_NEGATIVES
from protocols.store import atomic_dir

SCORE_BATCH = 256
# full ranking: scores held at once (users x pool) while a batch is reduced to ranks
FULL_BATCH_SCORES = 2**18
RUN_TOKEN = ".run"  # in the artifact cache: proves a worker sees the driver's storage


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs besides the protocol files: the system's class travels
    by reference (module and name), so workers must have the same code installed."""

    table: str
    dataset: str
    setting: str
    system: str  # canonical name
    seed: int
    profile: str
    cls: type[System]
    config: dict[str, Any]
    key: str  # bench.runner.cell_key
    protocol: str  # the driver's protocol directory, recorded in cell.json
    workdir: str  # the artifact cache (absolute; shared storage for remote workers)
    token: str | None = None  # RUN_TOKEN's content, checked on remote workers
    overrides: dict[str, Any] = field(default_factory=dict)  # --set: dotted path -> value

    def where(self) -> str:
        return f"{self.system} on {self.dataset} ({self.setting}), seed {self.seed}"


@dataclass(frozen=True)
class CellOutput:
    """A computed cell: file name -> text (scores.jsonl, metrics.jsonl, cell.json,
    timing.json), written by the driver."""

    texts: dict[str, str]


@dataclass(frozen=True)
class CellError:
    """A cell whose system raised (or that the cluster gave up on); `harness` marks an
    error of the harness itself (bad data, unusable storage), which stops the run."""

    error: str  # one line: "ExceptionType: message"
    traceback: str
    harness: bool = False
    exc: BaseException | None = field(default=None, repr=False, compare=False)  # local only


@dataclass(frozen=True)
class LocalProtocol:
    """A protocol directory this process can read (the serial run)."""

    path: str

    def load(self) -> ProtocolFiles:
        return load_protocol(Path(self.path))


_BUNDLE_DIR: tempfile.TemporaryDirectory | None = None


@dataclass(frozen=True)
class ProtocolBundle:
    """A protocol's files as bytes: what travels to workers (scattered once per worker),
    so they need no access to the driver's `--out`. Loading checks every file against the
    manifest's sha256, as reading a directory does."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, path: str | Path) -> ProtocolBundle:
        manifest = (Path(path) / "manifest.json").read_bytes()
        names = protocol_files(json.loads(manifest))
        return cls({**{n: (Path(path) / n).read_bytes() for n in names},
                    "manifest.json": manifest})

    def load(self) -> ProtocolFiles:
        global _BUNDLE_DIR
        if _BUNDLE_DIR is None:  # one private directory per worker process
            _BUNDLE_DIR = tempfile.TemporaryDirectory(prefix="molorec-bench-protocols-")
        root = Path(_BUNDLE_DIR.name) / hashlib.sha256(self.files["manifest.json"]).hexdigest()
        if not root.is_dir():
            with atomic_dir(root) as tmp:
                for name, data in self.files.items():
                    (tmp / name).write_bytes(data)
        return load_protocol(root)


def _threads(multithreaded: bool) -> int:
    """Torch CPU threads of a cell: MOLOREC_BENCH_THREADS if set, else 1, or every core for
    a system that declares itself `multithreaded` (the LLM rows: large matrix products
    scale; small models ran up to 10x slower with two threads whenever anything else ran
    beside them). The count never depends on how many cells run at once: it can move a
    cell's last bits (MoLoRec's scores, by up to 6e-7 between 1 and 2 threads), and
    parallel runs give the serial run's numbers."""
    env = os.environ.get("MOLOREC_BENCH_THREADS")
    return int(env) if env else (os.cpu_count() or 1) if multithreaded else 1


def _prepare(seed: int, multithreaded: bool = False) -> None:
    """Seed every generator, pin torch's CPU threads (`_threads`) and switch off autograd's
    anomaly detection (an import may have switched it on for the whole process; see
    baselines/_recbole.py): a cell trains at the same speed whatever ran before it."""
    import torch

    seed_everything(seed)
    torch.set_num_threads(_threads(multithreaded))
    torch.autograd.set_detect_anomaly(False)


CORES_LOCK = Path(tempfile.gettempdir()) / f"molorec-bench-cores-{os.getuid()}"  # per user


@contextmanager
def machine_cores(exclusive: bool, base: Path = CORES_LOCK) -> Iterator[None]:
    """Hold this machine's cores: shared by single-threaded cells, exclusively by a cell
    that runs on every core (as in a serial run, where it is alone; beside other cells its
    threads wait on each other, 3-10x slower). Writer-preferring: a cell waiting for the
    cores holds the gate, so no other cell starts meanwhile. flocks: a killed holder
    releases them."""
    gate = os.open(f"{base}.gate", os.O_RDWR | os.O_CREAT, 0o666)
    cores = os.open(f"{base}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(cores, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield
    finally:
        os.close(cores)
        os.close(gate)


def on_every_core(task: CellTask) -> bool:
    """Whether the cell's torch runs on several CPU threads (not on a GPU)."""
    if _threads(getattr(task.cls, "multithreaded", False)) <= 1:
        return False
    if getattr(task.cls, "uses_gpu", False):
        import torch

        return not torch.cuda.is_available()
    return True


def score_all(system: System, requests: Sequence[ScoreRequest], desc: str) -> np.ndarray:
    """Score in batches and check the contract (bench.api.check_scores)."""
    parts = []
    for start in tqdm(range(0, len(requests), SCORE_BATCH), desc=desc, leave=False,
                      unit="batch"):
        batch = requests[start:start + SCORE_BATCH]
        parts.append(check_scores(system.score(batch), batch, system.name))
    width = len(requests[0].candidates) if requests else 0
    return np.concatenate(parts) if parts else np.zeros((0, width))


def full_rank_rows(system: System, proto: ProtocolFiles, desc: str
                   ) -> tuple[list[dict], list[dict]]:
    """Full ranking: score the test requests (each the whole pool) in batches of at most
    FULL_BATCH_SCORES scores and reduce each batch to what the metrics need before the
    next, so memory stays bounded. Returns (scores.jsonl rows, metrics.jsonl rows).

    A scores.jsonl row keeps the positive's score and every candidate scored at or above
    it ([item, score], best first): exactly what a rank under the tie rule depends on, so
    every metric at any cutoff (and MRR) is recomputed from it (bench.results.load_cell),
    while a full score vector per user would be users x catalogue numbers. The pool items
    the user interacted with are not candidates and are dropped here."""
    pool = proto.test_requests[0].candidates if proto.test_requests else ()
    where = {item: j for j, item in enumerate(pool)}
    step = max(1, min(SCORE_BATCH, FULL_BATCH_SCORES // max(1, len(pool))))
    reqs, excl_sets = proto.test_requests, proto.test_exclude or ()
    score_rows: list[dict] = []
    bounds: list[tuple[int, int, int]] = []
    positives: tuple[str, ...] = ()
    for lo in tqdm(range(0, len(reqs), step), desc=desc, leave=False, unit="batch"):
        batch = reqs[lo:lo + step]
        s = check_scores(system.score(batch), batch, system.name)
        positives = positives or proto.test_positives()  # labels: once a batch is scored
        for n, row in enumerate(s):
            user, positive = batch[n].user, positives[lo + n]
            keep = np.ones(len(pool), dtype=bool)
            keep[[where[i] for i in excl_sets[lo + n]]] = False
            p = where[positive]
            n_cands = int(keep.sum())
            if np.isnan(row).all():  # an abstention: a miss, the positive ranked last
                score_rows.append({"user": user, "positive_score": None, "at_or_above": []})
                bounds.append((n_cands - 1, 0, n_cands))
                continue
            keep[p] = False
            top = np.flatnonzero(keep & (row >= row[p]))
            top = top[np.argsort(-row[top], kind="stable")]
            score_rows.append({"user": user, "positive_score": float(row[p]),
                               "at_or_above": [[pool[j], float(row[j])] for j in top]})
            bounds.append((int((row[top] > row[p]).sum()), int((row[top] == row[p]).sum()),
                           n_cands))
    above, tied, n_c = (np.array([b[k] for b in bounds], dtype=np.int64) for k in range(3))
    values = full_metric_values(above, tied, n_c)
    return score_rows, rows_of([r.user for r in reqs], positives, values)


def _compute(task: CellTask, protocol: LocalProtocol | ProtocolBundle) -> CellOutput:
    start = time.time()
    proto = protocol.load()
    if proto.full_ranking and not getattr(task.cls, "full_ranking", False):
        raise HarnessError(f"{task.system} does not declare full-ranking support "
                           "(System.full_ranking); it cannot run on a --negatives all protocol")
    _prepare(task.seed, getattr(task.cls, "multithreaded", False))
    system = task.cls(task.config, task.seed, task.workdir)
    gpu = _reset_gpu_peak()
    try:
        t0 = time.perf_counter()
        system.fit(proto.data, proto.valid)
        t1 = time.perf_counter()
        if proto.full_ranking:
            score_rows, rows = full_rank_rows(system, proto, f"{task.system} full ranking")
        else:
            scores = score_all(system, proto.test_requests, f"{task.system} scoring")
        t2 = time.perf_counter()
        describe = system.describe()
    finally:
        system.close()
    if not proto.full_ranking:
        # labels are read only now, after the system has scored
        positives = proto.test_positives()
        users = [r.user for r in proto.test_requests]
        candidates = [r.candidates for r in proto.test_requests]
        rows, _ = metric_rows(users, positives, candidates, scores)
        # an abstaining row (all NaN) is written as null: JSON has no NaN
        score_rows = [{"user": u, "candidates": list(c),
                       "scores": None if np.isnan(s).all() else s.tolist()}
                      for u, c, s in zip(users, candidates, scores, strict=True)]
    texts = {"scores.jsonl": jsonl_text(score_rows), "metrics.jsonl": jsonl_text(rows)}
    cls = task.cls
    meta = {
        "format": CELL_FORMAT, "key": task.key, "table": task.table,
        "dataset": proto.data.dataset, "class": f"{cls.__module__}:{cls.__qualname__}",
        "setting": proto.data.setting, "system": system.label, "group": cls.group,
        "seed": task.seed, "profile": task.profile, "config": task.config,
        "candidates_sha256": proto.candidates_sha256, "protocol": task.protocol,
        "negatives": proto.manifest.get("options", {}).get("negatives", DEFAULT_NEGATIVES),
        "describe": describe,
        **({"overrides": task.overrides} if task.overrides else {}),
        "scores_sha256": text_sha256(texts["scores.jsonl"]),
        "metrics_sha256": text_sha256(texts["metrics.jsonl"]),
    }
    texts["cell.json"] = json.dumps(meta, indent=2, sort_keys=True, default=str)
    texts["timing.json"] = json.dumps(
        {"fit_seconds": round(t1 - t0, 3), "score_seconds": round(t2 - t1, 3),
         "host": socket.gethostname(), "worker": _worker_name(),
         "start": round(start, 3), "end": round(time.time(), 3),
         **({"peak_gpu_gib": round(_gpu_peak_gib(), 3)} if gpu else {})})
    return CellOutput(texts)


def _reset_gpu_peak() -> bool:
    """Start counting this process's peak GPU memory (torch's allocator) for a cell;
    False without CUDA (nothing is recorded then)."""
    import torch

    if not torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats()
    return True


def _gpu_peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30


def _worker_name() -> str | None:
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return str(get_worker().name)
    except ValueError:  # not inside a Dask worker
        return None


def compute_cell(task: CellTask, protocol: LocalProtocol | ProtocolBundle
                 ) -> CellOutput | CellError:
    """Fit the task's system on the protocol and score its test candidates; what the
    system raises comes back as a CellError (the run goes on without the cell)."""
    try:
        return _compute(task, protocol)
    except Exception as e:
        message = " ".join(str(e).split())
        text = f"{type(e).__name__}: {message}" if message else type(e).__name__
        return CellError(text[:300], traceback.format_exc(), isinstance(e, HarnessError), e)


def _unfit_worker(task: CellTask) -> str | None:
    """Why this worker must not compute cells (None: it may)."""
    where = f"worker {socket.gethostname()} ({_worker_name()})"
    try:
        seen = (Path(task.workdir) / RUN_TOKEN).read_text().strip()
    except OSError:
        seen = None
    if seen != task.token:
        return (f"{where} does not see the driver's artifact cache {task.workdir}: --out must "
                "be on storage every worker mounts at the same path")
    from distributed import get_worker

    if get_worker().state.nthreads != 1:
        return (f"{where} runs {get_worker().state.nthreads} threads: start workers with "
                "--nthreads 1 (cells in one process would share torch's random state and "
                "thread count)")
    return None


def compute_remote(task: CellTask, protocol: ProtocolBundle) -> CellOutput | CellError:
    """compute_cell on a Dask worker: first check the worker (it shares the driver's
    artifact cache, it runs one cell at a time), then return only what pickles."""
    if (why := _unfit_worker(task)) is not None:
        return CellError(why, "", harness=True)
    with machine_cores(exclusive=on_every_core(task)):
        out = compute_cell(task, protocol)
    if isinstance(out, CellError):
        return CellError(out.error, out.traceback, out.harness)
    return out
