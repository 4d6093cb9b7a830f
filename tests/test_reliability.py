"""Nothing silently wrong, second round (issue 30): a results folder copied in part, a
--scheduler that is not a Dask scheduler, operating-system errors, Ctrl-C, dataset names in
any case, and compare's messages. Each case is what a hostile new user tried."""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench import executors
from bench.api import System
from bench.cli import main
from bench.runner import run_table
from protocols.datasets import canonical_sources
from protocols.download import resolve_name
from protocols.errors import OptionError

QUIET = {"log": lambda s: None}
ROOT = Path(__file__).resolve().parents[1]
INTERRUPTED = "interrupted: finished cells are kept; rerun the same command to resume"
TABLE_FILES = ("warm.md", "warm.tex", "warm.standalone.tex", "warm.json")


def _cell(out: Path, system: str = "Pop") -> Path:
    return out / "cells" / "ml-100k" / "warm" / system / "seed-0"


def _tables(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in TABLE_FILES}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# ---------------------------------------------------------------- 1. a partial results folder


def test_a_cell_directory_without_its_record_is_refused_then_recomputed(run_dir, capsys):
    """What an interrupted rsync leaves: the cell's directory, its scores, no cell.json."""
    cell = _cell(run_dir)
    scores = (cell / "scores.jsonl").read_bytes()
    for name in ("cell.json", "metrics.jsonl", "timing.json"):
        (cell / name).unlink()
    before = _tables(run_dir)
    for argv in (["report"], ["compare", "--against", "Random"], ["figures"],
                 ["explain", "--user", "1"]):
        capsys.readouterr()
        assert main([*argv, "--out", str(run_dir)]) == 2, argv
        err = capsys.readouterr().err
        assert f"damaged cell {cell}: cell.json is missing" in err, argv
        assert "Traceback" not in err
    assert _tables(run_dir) == before, "no table file is rewritten without the cell"

    messages: list[str] = []
    res = run_table("warm", "smoke", run_dir, systems=["Random", "Pop"], log=messages.append)
    assert any(f"damaged cell {cell}: cell.json is missing" in m and "recomputing" in m
               for m in messages)
    assert (cell / "scores.jsonl").read_bytes() == scores
    assert {r.system for r in res.results} == {"Random", "Pop"}


def test_report_keeps_a_table_whose_cell_directory_is_gone(run_dir, capsys):
    """A cell the table file shows, now absent altogether (not failed): refused by name."""
    shutil.rmtree(_cell(run_dir))
    before = _tables(run_dir)
    assert main(["report", "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "Pop on ml-100k (warm), seed 0" in err and "no longer stored" in err
    assert _tables(run_dir) == before


# ---------------------------------------------------------------- 2. a scheduler that is not one


def _silent_server(seconds: float) -> tuple[int, threading.Thread]:
    """A TCP server on 127.0.0.1 that accepts and never answers (like `http.server`
    waiting for a request line); it stops by itself after `seconds`."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    deadline = time.monotonic() + seconds

    def serve() -> None:
        held = []
        while time.monotonic() < deadline:
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue
        for c in held:
            c.close()
        srv.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return srv.getsockname()[1], thread


def test_a_scheduler_that_is_not_dask_fails_within_the_timeout(tmp_path, monkeypatch, capsys):
    port, server = _silent_server(30)
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT_S", 2)
    address = f"tcp://127.0.0.1:{port}"
    t0 = time.monotonic()
    rc = main(["run", "--table", "warm", "--profile", "smoke", "--scheduler", address,
               "--out", str(tmp_path / "o")])
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 2 and took < 10, (rc, took)
    assert f"cannot reach the Dask scheduler at {address}" in err
    assert "no Dask handshake within 2 s" in err and "dask scheduler" in err
    assert not (tmp_path / "o").exists()
    for bad, says in (("foo", "names no port"),
                      ("http://127.0.0.1:8786", "Dask does not speak http://")):
        t0 = time.monotonic()
        assert main(["run", "--table", "warm", "--scheduler", bad,
                     "--out", str(tmp_path / "o")]) == 2
        assert time.monotonic() - t0 < 5, "no connection is tried, nothing waits on close"
        assert says in capsys.readouterr().err
    server.join(35)


# ---------------------------------------------------------------- 3. operating-system errors


def test_an_out_under_a_regular_file_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory\n")
    for argv in (["run", "--table", "warm", "--profile", "smoke", "--systems", "Random"],
                 ["protocol", "build", "--dataset", "ml-100k", "--setting", "warm"]):
        assert main([*argv, "--out", str(blocker / "sub" / "out")]) == 2, argv
        err = capsys.readouterr().err
        assert f"{blocker} is a file where a directory is needed" in err, argv
        assert err.startswith("error: ") and err.count("\n") == 1
    assert blocker.read_text() == "not a directory\n"


def test_a_read_only_out_is_one_error_line(run_dir):
    """A real read-only file system: the folder bound read-only in a private mount
    namespace (skipped where unprivileged namespaces are not allowed)."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no unprivileged mount namespaces here")
    before = _tables(run_dir)
    py = f"{sys.executable} -m bench"
    script = (f'mount --bind "{run_dir}" "{run_dir}" && '
              f'mount -o remount,ro,bind "{run_dir}" && '
              f'{py} report --out "{run_dir}"; echo "rc=$?" >&2; '
              f'{py} run --table warm --profile smoke --systems Random,Pop --out "{run_dir}"; '
              'echo "rc=$?" >&2')
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, cwd=ROOT, env=_env(), timeout=300)
    err = done.stderr
    assert err.count("rc=2") == 2, err
    assert err.count("read-only file system; choose another --out") == 2, err
    assert "Traceback" not in err
    assert _tables(run_dir) == before


def test_a_full_disk_while_writing_a_table_leaves_the_old_files(run_dir, monkeypatch,
                                                                 capsys):
    """ENOSPC on the third of a table's four files: the two written are not put in place."""
    real_fdopen = os.fdopen
    opened = []

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        opened.append(fd)
        return Full(f) if len(opened) == 3 else f

    before = _tables(run_dir)
    monkeypatch.setattr(os, "fdopen", fdopen)
    assert main(["report", "--out", str(run_dir), "--table", "warm"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"error: cannot write {run_dir}: no space left on device" in err
    assert "Traceback" not in err
    assert _tables(run_dir) == before
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".warm")], "no temp file"


# ---------------------------------------------------------------- 4. Ctrl-C


class _Sleepy(System):
    """Sits in fit (at most a minute) after marking that it started."""

    name = "Sleepy"
    group = "Traditional"

    def fit(self, data, valid):
        (Path(self.workdir) / "sleepy.started").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.05)

    def score(self, requests):
        return np.zeros((len(requests), 30))


@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]], ids=["serial", "two-workers"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path, jobs):
    """SIGINT to the driver alone (as `kill -INT` sends it; a terminal's Ctrl-C reaches
    the workers too): the run stops within seconds, even with a cell busy on a worker."""
    out = tmp_path / "out"
    cells = out / "cells" / "ml-100k" / "warm"
    code = ("import sys; from bench import registry; "
            "registry.BUILTIN['Sleepy'] = 'tests.test_reliability:_Sleepy'; "
            "from bench.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "run", "--table", "warm", "--profile", "smoke",
         "--systems", "Random,Sleepy", "--out", str(out), *jobs],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # no terminal's process group: the driver alone gets it
        # a test suite started in the background (`tox &`) ignores SIGINT, and a child
        # inherits that: give the run the default disposition a terminal's command has
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (out / "cache" / "sleepy.started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the Sleepy cell never started"
            time.sleep(0.1)
        while jobs and not (cells / "Random" / "seed-0" / "cell.json").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the Random cell never finished"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - sent < 20, "Sleepy's minute in fit held the run"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "leaked semaphore" not in err, err
    said = [line for line in err.splitlines()  # all but the progress bars' lines
            if line.strip() and not re.search(r"\d+/\d+ \[|\x1b\[A", line)]
    assert said == [INTERRUPTED], err
    assert (cells / "Random" / "seed-0" / "cell.json").is_file()
    assert not (cells / "Sleepy").exists()


# ---------------------------------------------------------------- 5. dataset names in any case


def test_dataset_names_match_in_any_case(tmp_path, capsys):
    res = run_table("warm", "smoke", tmp_path / "a", datasets=["ML-100K"],
                    systems=["Random"], **QUIET)
    assert [r.dataset for r in res.results] == ["ml-100k"]
    assert (tmp_path / "a" / "cells" / "ml-100k" / "warm" / "Random" / "seed-0").is_dir()
    with pytest.raises(OptionError, match="another dataset than ml-100k"):
        run_table("warm", "smoke", tmp_path / "b", datasets=["ml-100k"],
                  general_from=["ML-100K"], **QUIET)
    assert not (tmp_path / "b").exists()
    assert canonical_sources(("AMAZON2014-beauty", "Ml-1m"), {"Ml-1m": "/d"}) == (
        ("amazon2014-Beauty", "ml-1m"), {"ml-1m": "/d"})
    with pytest.raises(OptionError, match="more than once"):
        canonical_sources(("ml-1m", "ML-1M"), {})
    assert resolve_name("ML-1M") == "ml-1m"
    assert main(["protocol", "build", "--dataset", "ML-100K", "--setting", "warm",
                 "--max-users", "30", "--out", str(tmp_path / "p")]) == 0
    assert '"dataset": "ml-100k"' in (tmp_path / "p" / "manifest.json").read_text()


# ---------------------------------------------------------------- 7. compare's messages


def test_compare_says_which_table_is_missing_and_suggests_a_row(run_dir, capsys):
    assert main(["compare", "--out", str(run_dir), "--table", "cold"]) == 2
    err = capsys.readouterr().err
    assert "holds no cells for table cold (only for warm)" in err
    assert main(["compare", "--out", str(run_dir), "--against", "Rnadom"]) == 2
    assert "Did you mean 'Random'?" in capsys.readouterr().err
    assert main(["compare", "--out", str(run_dir), "--against", "random"]) == 0
