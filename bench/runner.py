"""The data flow in one place: protocol files -> systems (fit, score) -> per-user results.
Every (table, dataset, setting, system, seed) cell is cached under its config hash;
finished cells are skipped on a rerun. The cells to compute go to an executor
(bench.executors: this process, local worker processes, or a Dask cluster); each comes
back as text and is written here, by the driver, atomically. Rendering the tables is the
layer above (reports.publish), handed in as `render`.

Layout under OUT:
  protocols/<dataset>/<setting>/seed-<n>/    the protocol files (see protocols/files.py)
  cells/<dataset>/<setting>/<system>/seed-<n>/  scores.jsonl, metrics.jsonl, cell.json
  cache/                                      artifacts systems share (protocols.store)
  <table>.failures.json                       the last run's failed cells
  <table>.not_built.json                      settings whose protocol could not be built
At another candidate count than the default (`negatives`), <setting> and <table> carry
a suffix (warm-n99, warm-nall: protocols.options.negatives_suffix), so the tables of
several counts live side by side and the default's paths are unchanged.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import outdir, profiles, registry
from bench.api import System
from bench.cells import CellError, CellOutput, CellTask, LocalProtocol, compute_cell
from bench.executors import RETRIES, Executor, OnDemand, Progress, Serial, make_executor
from bench.overrides import apply as apply_overrides
from bench.results import CELL_FORMAT, CellResult, DamagedCell, load_cell
from protocols import general_corpus, settings
from protocols.build import build_protocol, general_hashes, source_hashes
from protocols.datasets import canonical, canonical_sources, source_root
from protocols.digest import digest, file_sha256
from protocols.errors import HarnessError, OptionError, OutputError, SettingInfeasible
from protocols.files import overlapping, protocol_files
from protocols.options import FULL, ProtocolOptions, negatives_suffix
from protocols.store import atomic_dir, atomic_write_text

__all__ = ["CELL_FORMAT", "Variant", "cell_key", "ensure_protocol", "run_cell", "run_table"]
CELL_FILES = ("scores.jsonl", "metrics.jsonl", "cell.json", "timing.json")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _stale(root: Path, dataset: str, setting: str, seed: int, options: ProtocolOptions,
           sources: dict[str, str], general: dict[str, dict[str, str]]) -> str | None:
    """Why the protocol at `root` cannot be reused for these inputs (None: it can)."""
    try:
        have = json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        return "absent"
    except (OSError, ValueError):
        return "its manifest.json is not valid JSON"
    if not isinstance(have, dict):
        return "its manifest.json is not a protocol manifest"
    for key, want in (("dataset", dataset), ("setting", setting), ("seed", seed),
                      ("options", options.as_dict())):
        if have.get(key) != want:
            return f"built with {key} {have.get(key)!r}, this run needs {want!r}"
    want_version = settings.get(setting).version
    if have.get("split_version", 1) != want_version:
        return (f"built by version {have.get('split_version', 1)} of the {setting} split's "
                f"code, this run needs version {want_version}")
    if have.get("source") != sources:
        return "built from other data (the source files' sha256 differ)"
    if have.get("general_source", {}) != general:
        return "built from another general corpus (its source files' sha256 differ)"
    if general and have.get("general_overlap_rule", 1) != general_corpus.OVERLAP_RULE:
        return (f"its general corpus had the overlap removed by rule version "
                f"{have.get('general_overlap_rule', 1)}, this run needs version "
                f"{general_corpus.OVERLAP_RULE}")
    files = have.get("files") or {}
    for name in protocol_files(have):
        if not (root / name).is_file() or file_sha256(root / name) != files.get(name):
            return f"{name} does not match the sha256 in its manifest"
    return None


def ensure_protocol(out: Path, dataset: str, setting: str, seed: int, options: ProtocolOptions,
                    data_path: str | None = None, *, force: bool = False,
                    sources: dict[str, str] | None = None,
                    general_paths: Mapping[str, str] | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """Reuse the protocol directory under `out` only if it was built from the same source
    files (sha256, the general corpus's too) with the same options and is intact;
    otherwise (or with `force`) rebuild it. `sources` saves rehashing the data when the
    caller already has it; `general_paths`: directories of `options.general_from`."""
    root = (Path(out) / "protocols" / _slug(dataset) / (setting + negatives_suffix(
        options.negatives)) / f"seed-{seed}")
    if sources is None:
        sources = source_hashes(dataset, data_path)
    general = general_hashes(options, general_paths)
    reason = "--force" if force else _stale(root, dataset, setting, seed, options, sources,
                                            general)
    if reason is None:
        return root
    if reason != "absent":
        log(f"rebuilding the protocol {root}: {reason}")
    build_protocol(dataset, setting, seed, root, data_path=data_path, options=options,
                   general_paths=general_paths)
    return root


def cell_key(system_cls: type[System], config: dict, seed: int, manifest: dict,
             overrides: Mapping[str, object] | None = None) -> str:
    """Hash of everything that determines a cell's numbers. `config` is the one the cell
    runs with (System.configure: `--backbone` applied and model files pinned by sha256,
    `--set` applied); `overrides`, the `--set` changes, are named too, so that a cell
    is stated with the settings it was asked for. The split's and the system's code
    versions enter only once past 1, so cells of unchanged code keep their keys."""
    version = manifest.get("split_version", 1)
    code = getattr(system_cls, "version", 1)
    return digest({
        "format": CELL_FORMAT, "system": system_cls.name,
        "class": f"{system_cls.__module__}:{system_cls.__qualname__}",
        "config": config, "seed": seed, "protocol_files": manifest["files"],
        **({"split_version": version} if version != 1 else {}),
        **({"code_version": code} if code != 1 else {}),
        **({"overrides": dict(overrides)} if overrides else {}),
    })


def _check_cell_dir(cell_dir: Path) -> None:
    """A cell directory is replaced only if it holds nothing but cell files."""
    if cell_dir.is_dir():
        foreign = sorted(p.name for p in cell_dir.iterdir() if p.name not in CELL_FILES)
        if foreign:
            raise OutputError(f"{cell_dir} holds files a cell does not ({', '.join(foreign)}); "
                              "move them away, then rerun")
    elif cell_dir.exists():
        raise OutputError(f"{cell_dir} is a file where a cell directory belongs; move it away")


def _cached(cell_dir: Path, key: str, proto_dir: Path, log: Callable[[str], None]
            ) -> CellResult | None:
    """The stored cell if it has this key and verifies; a damaged one is reported and
    recomputed (it is the harness's own file)."""
    meta_path = cell_dir / "cell.json"
    if not meta_path.exists():
        if cell_dir.is_dir():  # emptied or copied in part: say so, as for a damaged one
            held = ", ".join(sorted(p.name for p in cell_dir.iterdir())) or "nothing"
            log(f"damaged cell {cell_dir}: cell.json is missing (the directory holds "
                f"{held}); recomputing it")
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        return load_cell(cell_dir, proto_dir)
    except (ValueError, DamagedCell) as e:
        reason = e if isinstance(e, DamagedCell) else f"damaged cell {cell_dir}: {e}"
        log(f"{reason}; recomputing it")
        return None


@dataclass(frozen=True)
class Variant:
    """What a run changes in the profile's system configs: `--backbone` (and its
    label) for every LLM row, and `--set` options (bench.overrides)."""

    backbone: str | None = None
    backbone_label: str | None = None
    overrides: tuple[str, ...] = ()

    def configs(self, classes: Mapping[str, type[System]], profile: str,
                log: Callable[[str], None] = print
                ) -> tuple[dict[str, dict], dict[str, dict[str, object]]]:
        """(canonical name -> the config its cells run with, name -> `--set` changes)."""
        configs, applied = apply_overrides(
            self.overrides, {n: cls.config_for(profile) for n, cls in classes.items()},
            profile, log)
        return ({n: cls.configure(configs[n], self.backbone, self.backbone_label)
                 for n, cls in classes.items()}, applied)


def _task(proto_dir: Path, proto: dict, name: str, cls: type[System], profile: str,
          seed: int, workdir: Path, table: str, token: str | None = None, *,
          config: dict, overrides: Mapping[str, object] | None = None) -> CellTask:
    overrides = dict(overrides or {})
    return CellTask(table, proto["dataset"], proto["setting"], name, seed, profile, cls, config,
                    cell_key(cls, config, seed, proto, overrides), str(proto_dir),
                    str(Path(workdir).resolve()), token, overrides)


def write_cell(cell_dir: Path, output: CellOutput, proto_dir: Path) -> CellResult:
    """Write a computed cell atomically (a temporary directory renamed into place), then
    read it back verified."""
    with atomic_dir(cell_dir, check=_check_cell_dir) as tmp:
        for name, text in output.texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return load_cell(cell_dir, proto_dir)


def run_cell(proto_dir: Path, system_name: str, profile: str, seed: int, cell_dir: Path,
             workdir: Path, force: bool = False, table: str = "", *,
             log: Callable[[str], None] = print, variant: Variant = Variant()
             ) -> CellResult:
    """Fit one system on one protocol and score its test candidates, in this process
    (cached; a cached cell is used only after its scores and metrics verify). What the
    system raises is raised here."""
    cls = registry.resolve(system_name, profile)
    name = registry.canonical(system_name, profile)
    configs, applied = variant.configs({name: cls}, profile, log)
    manifest = json.loads((Path(proto_dir) / "manifest.json").read_text())
    task = _task(proto_dir, manifest, name, cls, profile, seed, workdir, table,
                 config=configs[name], overrides=applied[name])
    cell_dir = Path(cell_dir)
    if not force and (cached := _cached(cell_dir, task.key, Path(proto_dir), log)) is not None:
        return cached
    _check_cell_dir(cell_dir)
    outcome = compute_cell(task, LocalProtocol(str(proto_dir)))
    if isinstance(outcome, CellError):
        raise outcome.exc or RuntimeError(outcome.error)
    return write_cell(cell_dir, outcome, Path(proto_dir))


@dataclass(frozen=True)
class CellFailure:
    """A cell whose system raised in fit or score; the run goes on without it."""

    dataset: str
    setting: str
    system: str  # canonical name
    label: str  # row label
    group: str
    seed: int
    error: str  # one line: "ExceptionType: message"
    traceback: str

    def line(self) -> str:
        return f"{self.label} on {self.dataset} ({self.setting}), seed {self.seed}: {self.error}"


@dataclass
class TableRun:
    """What `run_table` computed: the verified cells of the rows that finished, the
    failed cells, and the row order; `paths`/`markdown` once rendered."""

    table: str
    profile: str
    out: Path
    results: list[CellResult]
    failures: list[CellFailure]
    order: list[str]  # row labels in registry order (row order within a group)
    seconds: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # full ranking: label -> why
    not_built: dict[str, str] = field(default_factory=dict)  # "dataset/setting" -> why
    markdown: str = ""


Renderer = Callable[[TableRun], dict[str, Path]]


def _listed(option: str, given: Sequence | None, default: Sequence) -> tuple:
    """The given list, or the profile's default when the option is absent; an empty
    list is an error (it used to mean "the default" silently)."""
    if given is None:
        return tuple(default)
    if isinstance(given, str):
        given = [given]
    if not given:
        raise OptionError(f"{option} is empty: give a comma-separated list, or omit it for "
                          "the profile's default")
    dupes = sorted({str(x) for x in given if list(given).count(x) > 1})
    if dupes:
        raise OptionError(f"{option} names {', '.join(dupes)} more than once")
    return tuple(given)


def _check_seeds(seeds: tuple) -> None:
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**32:
            raise OptionError(f"--seeds must be integers from 0 to 2**32-1, got {s!r}")


def _systems(names: tuple[str, ...], profile: str) -> dict[str, type[System]]:
    """Canonical name -> class, for the names as given (any case, or a row label);
    two names for one system are refused."""
    canon: dict[str, str] = {}
    for n in names:
        c = registry.canonical(n, profile)
        if c in canon:
            raise OptionError(f"--systems names {c!r} twice ({canon[c]!r} and {n!r})")
        canon[c] = n
    return {c: registry.resolve(c, profile) for c in canon}


def _check_labels(classes: Mapping[str, type[System]], profile: str,
                  configs: Mapping[str, dict]) -> None:
    """Two systems with one row label (as configured: `--backbone-label` names the
    Backbone row) are refused."""
    labels: dict[str, str] = {}
    for c, cls in classes.items():
        label = registry.label_for(cls, profile, configs[c])
        if label.lower() in labels:
            raise OptionError(f"systems {labels[label.lower()]!r} and {c!r} both label their "
                              f"rows {label!r}; run them apart")
        labels[label.lower()] = c


def _failure(task: CellTask, error: CellError) -> CellFailure:
    return CellFailure(task.dataset, task.setting, task.system,
                       registry.label_for(task.cls, task.profile, task.config), task.cls.group,
                       task.seed,
                       error.error, error.traceback)


def failures_path(out: Path, table: str) -> Path:
    return Path(out) / f"{table}.failures.json"


def _record_failures(out: Path, table: str, failures: list[CellFailure]) -> None:
    """OUT/<table>.failures.json lists the last run's failed cells (`report` marks their
    rows); a run without failures removes it."""
    _record_json(failures_path(out, table), [vars(f) for f in failures])


def _record_json(path: Path, data: list | dict) -> None:
    """Write `data` to `path` as JSON, or remove `path` when there is nothing to record."""
    if data:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    elif path.exists():
        path.unlink()


def _full_ranking_rows(classes: dict[str, type[System]], negatives: int | str, profile: str
                      ) -> tuple[dict[str, type[System]], dict[str, str]]:
    """(the systems that run, row label -> why each other is left out): at full ranking
    only those declaring `full_ranking`; a table with none left is an error."""
    if negatives != FULL:
        return classes, {}
    kept = {n: c for n, c in classes.items() if getattr(c, "full_ranking", False)}
    left = {registry.label_for(c, profile): getattr(c, "full_ranking_reason", "")
            for n, c in classes.items() if n not in kept}
    if not kept:
        raise OptionError(f"--negatives {FULL}: none of the systems asked for "
                          f"({', '.join(classes)}) declares full-ranking support "
                          "(System.full_ranking)")
    return kept, left


def left_out_path(out: Path, table: str) -> Path:
    return Path(out) / f"{table}.left_out.json"


def _record_left_out(out: Path, table: str, left_out: dict[str, str]) -> None:
    """OUT/<table>.left_out.json: the rows a full-ranking run left out and why (`report`
    states them in the caption); removed when none was."""
    _record_json(left_out_path(out, table), left_out)


def not_built_path(out: Path, table: str) -> Path:
    return Path(out) / f"{table}.not_built.json"


def _record_not_built(out: Path, table: str, not_built: dict[str, str]) -> None:
    """OUT/<table>.not_built.json: the settings of the last run whose protocol could not
    be built on this data, and why (`report` states them in the caption); removed when
    every setting was built."""
    _record_json(not_built_path(out, table), not_built)


def run_table(table: str, profile: str = "cpu", out: str | Path = "runs/default",
              datasets: Sequence[str] | None = None, systems: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None, force: bool = False,
              data_path: str | None = None, log: Callable[[str], None] = print, *,
              keep_going: bool = True, render: Renderer | None = None,
              general_from: Sequence[str] | None = None, jobs: int | None = None,
              scheduler: str | None = None, retries: int = RETRIES,
              negatives: int | str | None = None, variant: Variant = Variant(),
              max_users: int | None = None) -> TableRun:
    """Run (or load from cache) every cell of a table.

    Options are checked before anything is written. `out` must be absent, empty or a
    results directory of this harness (see bench.outdir), and is locked for the run. A
    system that raises is recorded in `TableRun.failures` and the other cells go on
    (`keep_going=False`: re-raise). `render(run)`, if given, writes the table files while
    the lock is still held (reports.publish.render_run; `python -m bench run` passes it).
    `general_from` (`NAME[:PATH]` values) takes every dataset's domain-general corpus from
    those datasets; None: the profile's choice per dataset (Profile.general_from).
    The cells to compute run in this process (`jobs=1`), on `jobs` local worker processes,
    or on the Dask cluster at `scheduler` (bench.executors); the driver writes each.
    `jobs=None`: the profile's default for this machine (Profile.local_jobs).
    `negatives`: sampled negatives per test user (None: the profile's), or "all" for full
    ranking, which runs only the systems that declare `full_ranking` (the others are
    listed in `TableRun.left_out` and OUT/<table>.left_out.json, for the caption); the
    table and its setting directories are then named with protocols.options'
    `negatives_suffix` (warm-n99).
    A setting that cannot be built on valid data (protocols.errors.SettingInfeasible: a
    cold pool too small for the candidate count) is left out of a table of several
    settings, its reason in `TableRun.not_built` and OUT/<table>.not_built.json, and the
    other settings' cells go on; when no setting can be built the first error is raised.
    `variant`: `--backbone` and `--set` (Variant); the configs they give are computed
    (and the backbone found and hashed) before anything is written. `max_users`: a seeded
    user subsample per part instead of the profile's (ProtocolOptions.max_users)."""
    tables = settings.tables()
    if table not in tables:
        raise OptionError(f"unknown table {table!r}; use one of {', '.join(tables)}")
    if profile not in profiles.PROFILES:
        raise OptionError(f"unknown profile {profile!r}; use one of {', '.join(profiles.PROFILES)}")
    prof = profiles.get(profile)
    if datasets is not None:  # in the registered spelling: ML-100K reuses ml-100k's cells
        datasets = [canonical(d) for d in ([datasets] if isinstance(datasets, str)
                                           else datasets)]
    datasets = _listed("--datasets", datasets, prof.datasets_for(table))
    seeds = _listed("--seeds", seeds, prof.seeds)
    _check_seeds(seeds)
    classes = _systems(_listed("--systems", systems, prof.systems_for(table)), profile)
    negatives = prof.protocol.negatives if negatives is None else negatives
    label = table + negatives_suffix(negatives)  # the table's name, its files' stem
    classes, left_out = _full_ranking_rows(classes, negatives, profile)
    configs, applied = variant.configs(classes, profile, log)
    _check_labels(classes, profile, configs)
    if data_path is not None and len(datasets) != 1:
        raise OptionError("--data-path is the directory of one dataset: name that dataset "
                          "with --datasets NAME")
    given = (canonical_sources(*general_corpus.parse(general_from))
             if general_from is not None else None)
    general = {d: given or (prof.general_from.get(d, ()), {}) for d in datasets}
    options = {d: replace(prof.protocol, general_from=general[d][0], negatives=negatives,
                          max_users=max_users or prof.protocol.max_users)
               for d in datasets}
    for d, opts in options.items():
        opts.check()
        if d in general[d][0]:
            raise OptionError(f"--general-from {d}: the domain-general corpus must come from "
                              f"another dataset than {d} (omit --general-from to split the "
                              "dataset's users)")
    out = Path(out)
    for d in datasets:
        for name, path in ((d, data_path), *((g, general[d][1].get(g))
                                             for g in general[d][0])):
            root = source_root(name, path)
            if overlapping(root, out):
                raise OutputError(f"--out {out} overlaps the input directory {root}; write "
                                  "results somewhere else")
    executor = make_executor(jobs, scheduler, retries, prof.local_jobs())
    t0 = time.perf_counter()
    with executor, outdir.locked(out):
        protos, infeasible = {}, {}
        for d in datasets:
            sources = source_hashes(d, data_path)
            for s in tables[table]:
                try:
                    protos[(d, s)] = ensure_protocol(
                        out, d, s, prof.protocol_seed, options[d], data_path, force=force,
                        sources=sources, general_paths=general[d][1], log=log)
                except SettingInfeasible as e:
                    infeasible[(d, s)] = e
        if infeasible and not protos:
            raise next(iter(infeasible.values()))
        not_built = {f"{d}/{s}": str(e) for (d, s), e in infeasible.items()}
        for key, why in not_built.items():
            log(f"the {key} protocol cannot be built; its cells are left out: {why}")
        workdir = (out / "cache").resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        token = executor.prepare(workdir)
        manifests = {k: json.loads((p / "manifest.json").read_text()) for k, p in protos.items()}
        grid = [(d, s, seed, name) for d in datasets for s in tables[table]
                if (d, s) in protos for seed in seeds for name in classes]
        todo: list[tuple[int, CellTask, Path]] = []
        done: dict[int, CellResult] = {}
        for n, (d, s, seed, name) in enumerate(grid):
            cell_dir = (out / "cells" / _slug(d) / (s + negatives_suffix(negatives))
                        / _slug(name) / f"seed-{seed}")
            task = _task(protos[(d, s)], manifests[(d, s)], name, classes[name], profile, seed,
                         workdir, label, token, config=configs[name], overrides=applied[name])
            if not force and (cached := _cached(cell_dir, task.key, protos[(d, s)],
                                                log)) is not None:
                done[n] = cached
                continue
            _check_cell_dir(cell_dir)
            todo.append((n, task, cell_dir))
        executor.expect([task for _, task, _ in todo])
        if todo and executor.name != Serial.name:
            why = (f" (the {profile} profile's default on this machine; --jobs 1: in this "
                   "process)" if isinstance(executor, OnDemand) else "")
            log(f"{len(todo)} of {len(grid)} cells to compute on {executor.name}{why}")
        failures = _compute(executor, todo, len(grid), done, keep_going, out, label, log)
        _record_failures(out, label, failures)
        _record_left_out(out, label, left_out)
        _record_not_built(out, label, not_built)
        failed = {f.system for f in failures}
        ranked = sorted(classes, key=lambda n: registry.rank(classes[n]))
        run = TableRun(label, profile, out,
                       [done[n] for n in sorted(done) if grid[n][3] not in failed],
                       failures, [registry.label_for(classes[n], profile, configs[n])
                                  for n in ranked],
                       left_out=left_out, not_built=not_built)
        if render is not None and run.results:
            run.paths = render(run)
            run.markdown = run.paths["md"].read_text() if "md" in run.paths else ""
    run.seconds = time.perf_counter() - t0
    return run


def _compute(executor: Executor, todo: list[tuple[int, CellTask, Path]], total: int,
             done: dict[int, CellResult], keep_going: bool, out: Path, table: str,
             log: Callable[[str], None]) -> list[CellFailure]:
    """Run the (grid index, task, cell directory) items on the executor and write each
    cell as it comes back (into `done`, by grid index); returns the failed cells in grid
    order."""
    failures: dict[int, CellFailure] = {}
    progress = Progress(total, f"{table} table")
    progress.finished(True, len(done))
    try:
        for i, outcome in executor.run([task for _, task, _ in todo], progress):
            n, task, cell_dir = todo[i]
            if isinstance(outcome, CellError):
                if outcome.harness:
                    raise outcome.exc or HarnessError(outcome.error)
                if not keep_going:
                    raise outcome.exc or RuntimeError(f"{task.where()}: {outcome.error}")
                failures[n] = _failure(task, outcome)
                log(f"FAILED {failures[n].line()} (traceback in {failures_path(out, table)})")
                progress.finished(False)
                continue
            done[n] = write_cell(cell_dir, outcome, Path(task.protocol))
            progress.finished(True)
    finally:
        progress.close()
    return [failures[n] for n in sorted(failures)]
