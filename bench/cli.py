"""A thin command line over the Python API (reports.publish, bench.runner, protocols.build).

It sits on top of every layer (the one bench module that imports reports): run = cells
(bench.runner) then table files (reports.publish). Choices come from the registries:
tables and settings from protocols.settings, option defaults from ProtocolOptions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import profiles
from bench.executors import RETRIES
from protocols import settings
from protocols.options import ProtocolOptions, negatives_suffix, parse_negatives

EPILOG = """examples:
  python -m bench run --table warm                      # cpu profile, embedded ML-100K
  python -m bench run --table cold --profile smoke --out /tmp/smoke
  python -m bench run --table warm --jobs 1                # in this process, one cell at a time
  python -m bench run --table warm --scheduler tcp://10.0.0.5:8786 --out /shared/runs/w
  python -m bench protocol build --dataset ml-100k --setting warm --seed 0 --out data/warm
  python -m bench report --out runs/default --table warm --reference paper
  python -m bench run --table warm --negatives 99        # 1 + 99 candidates: table warm-n99
  python -m bench robustness --out runs/default --table warm  # warm at every stored count
  python -m bench list-systems
  python -m bench figures --out runs/default            # Figures 4 and 5 of a finished run
  python -m bench explain --out runs/default --user 42  # a case study (Figure 6)
"""


GENERAL_FROM_HELP = (
    "take the domain-general corpus from these datasets (comma-separated or repeated; PATH: "
    "a directory of the dataset's files),\noverlap with the target removed, instead of a "
    "share of the dataset's own users")


BACKBONE_HELP = (
    "the LLM of every LLM row instead of the profile's: a checkpoint directory, a model id\n"
    "in the local Hugging Face cache, or a .gguf file (nothing is downloaded); keyed by the\n"
    "sha256 of its weight and tokenizer files (hashed once, remembered by path, size, mtime)")
BACKBONE_FIND_HELP = (
    "where the backbone the cells were computed with is now (as for `run --backbone`);\n"
    "checked against the sha256 in their cell.json (default: the path recorded there)")
SET_HELP = (
    "change one setting of a system's profile config (repeatable): SYSTEM is a system\n"
    "name or * (every system of the run with PATH); VALUE is JSON, else a string. E.g.\n"
    "--set MoLoRec.specific.train.epochs=1 --set '*.prompt.max_history=20'.\n"
    "Part of the cell key, recorded in cell.json and stated in the table caption")


def _jobs_defaults() -> str:
    """The profiles' --jobs defaults, for --help."""
    parallel = {n: p.jobs_memory_gib for n, p in profiles.PROFILES.items() if p.jobs_memory_gib}
    one = [n for n in profiles.PROFILES if n not in parallel]
    return ";\n".join([f"{n}: one per core, at most one per {g:g} GiB of memory"
                      for n, g in parallel.items()] + ([" and ".join(one) + ": 1"] if one else []))


def _csv(text: str) -> list[str]:
    """Comma-separated names; empty items are dropped (an empty list is refused later)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def _negatives(text: str) -> int | str:
    from protocols.errors import OptionError

    try:
        return parse_negatives(text)
    except OptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


NEGATIVES_HELP = ("sampled negatives per test user (default {d}: 1 positive + {d}); 'all': "
                  "full ranking\nover every item the user has not interacted with (systems "
                  "that declare it; validation\nstays 1 + {d})")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", epilog=EPILOG, formatter_class=argparse.RawTextHelpFormatter,
        description="Benchmark harness for LLM-based recommendation: every system ranks the "
                    f"same 1 positive + {ProtocolOptions().negatives} negative candidates per "
                    "user.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train and score every system of a table, then render it",
                         formatter_class=argparse.RawTextHelpFormatter)
    tables = list(settings.tables())
    defaults = ProtocolOptions()
    run.add_argument("--table", required=True, choices=tables,
                     help="warm: leave-one-out; cold: new-item test; fewshot: 10/20/30%% "
                          "of training samples")
    run.add_argument("--profile", default="cpu", choices=list(profiles.PROFILES),
                     help="smoke: minutes, for tests; cpu (default): ML-100K on 2 cores; "
                          "paper: the paper's datasets and settings, for GPUs")
    run.add_argument("--datasets", type=_csv, help="comma-separated (default: the profile's)")
    run.add_argument("--systems", type=_csv, help="comma-separated (default: the profile's)")
    run.add_argument("--seeds", type=_ints,
                     help="comma-separated integers >= 0 (default: the profile's)")
    run.add_argument("--out", default="runs/default",
                     help="results directory (cache): absent, empty, or written by a "
                          "previous run;\nlocked while a run uses it")
    run.add_argument("--force", action="store_true",
                     help="rebuild the protocols and recompute cached cells")
    run.add_argument("--reference", choices=["paper"],
                     help="add the paper's published numbers, labelled as such")
    run.add_argument("--data-path", help="directory of the dataset's files (one dataset)")
    run.add_argument("--general-from", action="append", metavar="NAME[:PATH]",
                     help=GENERAL_FROM_HELP + " (default: the profile's; paper: the paper's)")
    run.add_argument("--jobs", type=int,
                     help="cells computed at once by local worker processes; 1: in this "
                          f"process,\none after another (default: the profile's;\n"
                          f"{_jobs_defaults()}; started only when two cells left to compute\n"
                          "can run side by side: LLM cells on the CPU run one at a time)")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="compute the cells on the Dask cluster at ADDRESS (tcp://host:8786);"
                          "\n--out must be on storage every worker mounts at the same path")
    run.add_argument("--retries", type=int, default=RETRIES,
                     help=f"times a cell whose worker died is rerun (default {RETRIES})")
    run.add_argument("--negatives", type=_negatives, metavar="N|all",
                     help=NEGATIVES_HELP.format(d=defaults.negatives)
                     + ";\nthe table is named e.g. warm-n99 (its files beside the default's)")
    run.add_argument("--backbone", metavar="MODEL", help=BACKBONE_HELP)
    run.add_argument("--backbone-label", metavar="LABEL",
                     help="the backbone's name in the rows and the caption (default: the "
                          "model's)")
    run.add_argument("--set", action="append", dest="overrides", metavar="SYSTEM.PATH=VALUE",
                     help=SET_HELP)

    rep = sub.add_parser("report", help="rebuild tables from stored results (no training)")
    rep.add_argument("--out", default="runs/default", help="a results directory of `run`")
    rep.add_argument("--table", choices=tables,
                     help="default: every table with stored cells")
    rep.add_argument("--reference", choices=["paper"])
    rep.add_argument("--negatives", type=_negatives, metavar="N|all",
                     help="the table run at this candidate count (with --table; default: "
                          "every stored one)")

    rob = sub.add_parser("robustness", help="do a table's conclusions hold at other "
                         "candidate counts? (no training)")
    rob.add_argument("--out", default="runs/default", help="a results directory of `run`")
    rob.add_argument("--table", default="warm", choices=tables)
    rob.add_argument("--against", default="MoLoRec", help="the row every other is tested "
                     "against (default MoLoRec)")

    cmp = sub.add_parser("compare", help="every row against one row: means, paired t-test "
                                         "p-values, fit and score seconds (no training)")
    cmp.add_argument("--out", default="runs/default", help="a results directory of `run`")
    cmp.add_argument("--table", choices=tables, help="default: every table with stored cells")
    cmp.add_argument("--against", default="MoLoRec", help="the reference row (default MoLoRec)")
    cmp.add_argument("--metrics", type=_csv, default=["NDCG@1", "NDCG@3"],
                     help="comma-separated (default NDCG@1,NDCG@3)")

    sub.add_parser("list-systems", help="built-in systems and installed plugins")

    fig = sub.add_parser("figures", help="the paper's Figures 4 and 5 from a finished run "
                         "(PNG, SVG and CSV under OUT/figures)")
    fig.add_argument("--out", default="runs/default", help="a results directory of `run`")
    fig.add_argument("--figures", type=_ints, default=[4, 5],
                     help="which: 4 (mixture weights, from stored cells) and/or 5 (NDCG@1 "
                          "against unlabeled prompts; computes, cached)")
    fig.add_argument("--prompts", type=_ints, default=[10, 25, 50, 100, 200],
                     help="Figure 5's prompt counts (the table's own count is added)")
    fig.add_argument("--settings", type=_csv, default=["warm", "cold"],
                     help="settings to draw (default warm,cold)")
    fig.add_argument("--backbone", metavar="MODEL", help=BACKBONE_FIND_HELP)

    exp = sub.add_parser("explain", help="a case study: one test user's recommendation and "
                         "its explanation by MoLoRec (the paper's Figure 6)")
    exp.add_argument("--out", default="runs/default", help="a results directory of `run`")
    exp.add_argument("--user", required=True, help="a test user id")
    exp.add_argument("--table", default="warm", choices=tables)
    exp.add_argument("--setting", help="default: the table's first setting")
    exp.add_argument("--dataset", help="default: the one dataset with a MoLoRec cell")
    exp.add_argument("--seed", type=int, help="default: the lowest seed run")
    exp.add_argument("--backbone", metavar="MODEL", help=BACKBONE_FIND_HELP)

    gpu = sub.add_parser(
        "gpu-check", formatter_class=argparse.RawTextHelpFormatter,
        help="the paper profile's LLM rows on a small ML-1M slice: is this GPU machine "
             "ready, and how many GPU-hours will the paper's tables take?",
        description="Runs the warm table of MovieLens-1M on the paper profile's settings, "
                    "USERS seeded users per part (the\ngeneral corpus is the other part), one "
                    "seed, every LLM row, on --backbone; then, where vLLM is\ninstalled, "
                    "compares the zero-shot row's hf and vLLM scores. Needs: the backbone and "
                    "ML-1M's raw\nfiles (`bench data download ml-1m`, or --data-path). Writes "
                    "OUT/gpu-check.md: per row fit and score\nseconds, users per second, peak "
                    "GPU memory, projected GPU-hours of the paper's tables.\nRefuses without "
                    "a CUDA GPU unless --cpu.")
    gpu.add_argument("--backbone", metavar="MODEL", help=BACKBONE_HELP)
    gpu.add_argument("--out", default="runs/gpu-check", help="results directory (cache)")
    gpu.add_argument("--users", type=int, default=200, help="users per part (default 200)")
    gpu.add_argument("--data-path", help="ML-1M's folder (default: the downloaded one)")
    gpu.add_argument("--systems", type=_csv, help="comma-separated (default: every LLM row)")
    gpu.add_argument("--set", action="append", dest="overrides", metavar="SYSTEM.PATH=VALUE",
                     help="as for `run`")
    gpu.add_argument("--cpu", action="store_true",
                     help="run the slice on the CPU when there is no GPU (slow)")

    proto = sub.add_parser("protocol", help="protocol files").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    b = proto.add_parser("build", help="write the split and the candidate files")
    b.add_argument("--dataset", required=True, help="ml-100k (embedded), ml-1m, ml-10m, "
                   "amazon2014-<Category>, amazon2018-<Category>, or any name with --data-path")
    b.add_argument("--setting", required=True, choices=settings.names())
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True,
                   help="directory to write: absent, empty, or a protocol directory built "
                        "before (replaced atomically); never inside --data-path")
    b.add_argument("--data-path", help="directory with the raw files / RecBole atomic files")
    b.add_argument("--kcore", type=int, default=defaults.kcore,
                   help=f"k-core filter (default {defaults.kcore})")
    b.add_argument("--general-fraction", type=float, default=defaults.general_fraction,
                   help="share of users moved to the domain-general corpus (default "
                        f"{defaults.general_fraction})")
    b.add_argument("--cold-fraction", type=float, default=defaults.cold_fraction,
                   help="share of items made new in the cold setting (default "
                        f"{defaults.cold_fraction})")
    b.add_argument("--max-users", type=int, help="seeded user subsample per part (>= 1)")
    b.add_argument("--general-from", action="append", metavar="NAME[:PATH]",
                   help=GENERAL_FROM_HELP)
    b.add_argument("--negatives", type=_negatives, default=defaults.negatives, metavar="N|all",
                   help=NEGATIVES_HELP.format(d=defaults.negatives))

    data = sub.add_parser("data", help="datasets").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    d = data.add_parser("download", help="download a dataset, or every dataset a profile "
                        "reads (needs internet)")
    d.add_argument("name", nargs="?", help="ml-1m, ml-10m, amazon2014-<Category>, ...")
    d.add_argument("--profile", choices=list(profiles.PROFILES),
                   help="every dataset the profile's tables read, their general corpora\n"
                        "included (paper: 13 datasets); instead of NAME")
    d.add_argument("--dest", help="default: $MOLOREC_BENCH_DATA or ~/.cache/molorec-bench/data")
    d.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the server at each step (default 60)")
    d.add_argument("--base-url", help=argparse.SUPPRESS)
    return p


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


def _cmd_run(a: argparse.Namespace) -> int:
    from bench.runner import Variant, failures_path
    from reports.publish import publish_table

    variant = Variant(a.backbone, a.backbone_label, tuple(a.overrides or ()))
    res = publish_table(a.table, a.profile, a.out, reference=a.reference,
                        datasets=a.datasets, systems=a.systems, seeds=a.seeds, force=a.force,
                        data_path=a.data_path, general_from=a.general_from, jobs=a.jobs,
                        scheduler=a.scheduler, retries=a.retries, negatives=a.negatives,
                        variant=variant)
    print(res.markdown)
    for kind, path in res.paths.items():
        print(f"wrote {kind}: {path}")
    print(f"wall time: {res.seconds:.0f} s")
    for key, why in res.not_built.items():
        _warn(f"error: {key}: not built, its cells are left out of the table: {why}")
    if res.failures:
        shown = "the table above has the rows that finished" if res.paths else "no table"
        _warn(f"error: {len(res.failures)} cell(s) failed ({shown}; failed rows are marked):")
        for f in res.failures:
            _warn(f"  {f.line()}")
        _warn(f"tracebacks: {failures_path(Path(a.out), res.table)}; fix the system and rerun "
              "(finished cells are reused)")
        return 1
    return 1 if res.not_built else 0


def _cmd_report(a: argparse.Namespace) -> int:
    from reports.publish import rebuild

    if a.negatives is not None and not a.table:
        _warn("error: --negatives needs --table")
        return 2
    table = a.table + negatives_suffix(a.negatives) if a.table and a.negatives else a.table
    for paths in rebuild(Path(a.out), table, a.reference, log=_warn):
        print(paths["md"].read_text())
        for kind, path in paths.items():
            print(f"wrote {kind}: {path}")
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from bench.stored import finished_cells
    from protocols.errors import OutputError
    from reports.compare import compare, timings, to_markdown
    from reports.publish import row_order

    cells = finished_cells(Path(a.out), log=_warn)
    tables = settings.tables()
    if a.table:
        held = sorted(t for t, ss in tables.items() if any(c.setting in ss for c in cells))
        cells = [c for c in cells if c.setting in tables[a.table]]
        if not cells:
            raise OutputError(f"the folder {a.out} holds no cells for table {a.table} (only "
                              f"for {', '.join(held)}); run `python -m bench run --table "
                              f"{a.table} --out {a.out}` first")
    rank = {label: i for i, label in enumerate(row_order(cells, []))}
    cells.sort(key=lambda c: (c.dataset, c.setting, c.seed, rank[c.system]))
    print(to_markdown(compare(cells, a.against, a.metrics, timings(Path(a.out))), a.against,
                      a.metrics))
    return 0


def _cmd_robustness(a: argparse.Namespace) -> int:
    from reports.robustness import write_report

    paths = write_report(Path(a.out), a.table, a.against, log=_warn)
    print(paths["md"].read_text())
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0


def _cmd_gpu_check(a: argparse.Namespace) -> int:
    from bench.gpu_check import LLM_ROWS, gpu_check

    text, path = gpu_check(a.backbone, Path(a.out), users=a.users, cpu=a.cpu,
                           data_path=a.data_path, systems=a.systems or LLM_ROWS,
                           overrides=a.overrides or (), log=_warn)
    print(text)
    print(f"wrote {path}")
    return 0


def _cmd_list(_: argparse.Namespace) -> int:
    from bench import registry

    builtin = set(registry.BUILTIN)
    for name, target in registry.available().items():
        origin = "built-in" if name in builtin else "plugin"
        print(f"{name:12s} {origin:8s} {target}")
    for reason in registry.refused().values():
        _warn(f"refused: {reason}")
    return 0


def _cmd_protocol(a: argparse.Namespace) -> int:
    from protocols.build import build_protocol
    from protocols.datasets import canonical, canonical_sources
    from protocols.general_corpus import parse

    names, paths = canonical_sources(*parse(a.general_from or []))
    options = ProtocolOptions(kcore=a.kcore, general_fraction=a.general_fraction,
                              cold_fraction=a.cold_fraction, max_users=a.max_users,
                              general_from=names, negatives=a.negatives)
    m = build_protocol(canonical(a.dataset), a.setting, a.seed, a.out, data_path=a.data_path,
                       options=options, general_paths=paths)
    print(json.dumps({"out": a.out, "counts": m["counts"],
                      "candidates_sha256": m["candidates_sha256"]}, indent=2))
    return 0


def _cmd_data(a: argparse.Namespace) -> int:
    from protocols.datasets import data_home, downloadable
    from protocols.download import download_dataset
    from protocols.errors import OptionError

    if (a.name is None) == (a.profile is None):
        raise OptionError("data download: give a dataset NAME or --profile PROFILE")
    names = [a.name] if a.name else profiles.get(a.profile).datasets_to_download(downloadable())
    if not names:
        print(f"the {a.profile} profile reads only embedded data: nothing to download")
    for name in names:
        path = download_dataset(name, Path(a.dest) if a.dest else data_home(),
                                base_url=a.base_url, timeout=a.timeout)
        print(f"downloaded {name} to {path}")
    return 0


def _cmd_figures(a: argparse.Namespace) -> int:
    from bench.cli_analysis import figures

    for path in figures(Path(a.out), a.figures, a.prompts, a.settings, log=_warn,
                        backbone=a.backbone):
        print(f"wrote {path}")
    return 0


def _cmd_explain(a: argparse.Namespace) -> int:
    from bench.cli_analysis import explain

    text, path = explain(Path(a.out), a.user, a.table, a.setting, a.dataset, a.seed,
                         backbone=a.backbone)
    print(text)
    print(f"wrote {path}")
    return 0


COMMANDS = {"run": _cmd_run, "report": _cmd_report, "compare": _cmd_compare,
            "list-systems": _cmd_list,
            "protocol": _cmd_protocol, "data": _cmd_data, "figures": _cmd_figures,
            "explain": _cmd_explain, "robustness": _cmd_robustness,
            "gpu-check": _cmd_gpu_check}


def _output(a: argparse.Namespace) -> tuple[str | None, str | None]:
    """The command's output option and its value (what an OSError's remedy names)."""
    for option in ("out", "dest"):
        if getattr(a, option, None) is not None:
            return f"--{option}", str(getattr(a, option))
    return None, None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from bench.cli_errors import EXIT_INTERRUPTED, INTERRUPTED, explain_os_error
    from protocols.errors import HarnessError

    try:
        return COMMANDS[args.command](args)
    except HarnessError as e:  # every error the harness defines says what to do
        _warn(f"error: {e}")
        return 2
    except OSError as e:  # read-only, permission, no space, a file in the way
        message = explain_os_error(e, *_output(args))
        if message is None:
            raise
        _warn(f"error: {message}")
        return 2
    except KeyboardInterrupt:  # the run's `with` blocks have closed its workers by now
        _warn(INTERRUPTED)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
