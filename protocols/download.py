"""Fetch the raw dataset files (`python -m bench data download NAME`).

What to fetch is each dataset's spec (protocols.datasets: urls, published checksums).
Where no sha256 is published (ml-10m, the Amazon 2014 files), the first download records
it in `<dest>/<name>/checksums.json` (trust on first use) and every later download or
hand-placed copy is verified against it.

Only the standard library (urllib) and tqdm: a `.part` file is resumed with an HTTP Range
request, verified, then renamed into place, so a final path only ever holds a checked file.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import math
import os
import shutil
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from protocols.datasets import RemoteFile, Source, download_source, downloadable
from protocols.errors import HarnessError, OptionError

CHECKSUMS = "checksums.json"
CHUNK = 1 << 16


class DownloadError(HarnessError, RuntimeError):
    """A dataset could not be fetched or failed verification; the message says what to do."""


# ---------------------------------------------------------------- helpers


def resolve_name(name: str) -> str:
    """Exact or case-insensitive match among the downloadable datasets (their specs in
    protocols.datasets), else an error with the closest names."""
    names = downloadable()
    if name in names:
        return name
    folded = {k.lower(): k for k in names}
    if name.lower() in folded:
        return folded[name.lower()]
    close = difflib.get_close_matches(name.lower(), list(folded), n=3, cutoff=0.5)
    hint = (f" Did you mean {', '.join(repr(folded[c]) for c in close)}?" if close
            else f" Known: {', '.join(sorted(names))}.")
    raise DownloadError(f"unknown dataset {name!r}.{hint}")


def _hashes(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _read_recorded(folder: Path) -> dict[str, str]:
    path = folder / CHECKSUMS
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DownloadError(f"{path} is not valid JSON ({err}); fix or delete it") from err
    return {k: v["sha256"] for k, v in data.items() if isinstance(v, dict) and "sha256" in v}


def _record(folder: Path, filename: str, sha256: str, url: str) -> None:
    path = folder / CHECKSUMS
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[filename] = {"sha256": sha256, "url": url}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _verify(path: Path, remote: RemoteFile, expected_sha: str | None) -> tuple[str, str | None]:
    """(sha256, None) if the file matches every known checksum, else (sha256, what differs)."""
    sha, md5 = _hashes(path)
    if expected_sha is not None and sha != expected_sha:
        return sha, f"sha256 {sha}, expected {expected_sha}"
    if remote.md5 is not None and md5 != remote.md5:
        return sha, f"md5 {md5}, expected {remote.md5}"
    return sha, None


def _unreachable(err: BaseException) -> bool:
    """Connection-level failures (refused, DNS, unreachable, timeout), not HTTP or disk errors."""
    if isinstance(err, urllib.error.HTTPError):
        return False
    if isinstance(err, urllib.error.URLError):
        return isinstance(err.reason, OSError) and not isinstance(err.reason, ssl.SSLError)
    return isinstance(err, (TimeoutError, socket.gaierror))


def _manual_hint(source: Source, folder: Path) -> str:
    urls = "\n  ".join(f.url for f in source.files)
    return (f"To install it by hand, download on a connected machine:\n  {urls}\n"
            f"and place the file(s) in {folder}/ (see {source.homepage}); then rerun this "
            f"command to verify{' and unpack' if any(f.extract for f in source.files) else ''}.")


def _url(remote: RemoteFile, base_url: str | None) -> str:
    if base_url is None:
        return remote.url
    return base_url.rstrip("/") + urlsplit(remote.url).path


# ---------------------------------------------------------------- transfer


def _fetch(url: str, part: Path, timeout: float, progress: bool, label: str) -> bool:
    """Download url into part, resuming it when present; True if an old .part was resumed."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "molorec-bench"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # already complete: let verification decide
            return True
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        if resumed:
            first = response.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
            if first != str(offset):
                raise DownloadError(f"{url}: asked to resume at byte {offset}, server sent "
                                    f"{response.headers.get('Content-Range')!r}; delete {part} "
                                    "and rerun")
        mode = "ab" if resumed else "wb"
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with open(part, mode) as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, disable=not progress, leave=False) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
        if total is not None and part.stat().st_size < total:
            raise DownloadError(f"{url}: connection closed early; rerun to resume from {part}")
        return resumed


def _download_one(remote: RemoteFile, url: str, folder: Path, expected_sha: str | None,
                  timeout: float, progress: bool) -> str:
    """Fetch, verify and rename into place; returns the sha256."""
    final = folder / remote.filename
    part = final.with_name(final.name + ".part")
    for attempt in range(2):
        resumed = _fetch(url, part, timeout, progress, remote.filename)
        sha, problem = _verify(part, remote, expected_sha)
        if problem is None:
            os.replace(part, final)
            return sha
        part.unlink()
        if not resumed or attempt:
            break  # a fresh download is wrong: retrying would not help
    raise DownloadError(
        f"checksum mismatch for {url}: got {problem}. The partial file was deleted; the "
        f"server may have changed the file or the transfer was corrupted. If the new file is "
        f"trusted, delete its entry in {folder / CHECKSUMS} (if any) and rerun.")


def _same_files(new: Path, old: Path) -> bool:
    """True if every file under `new` exists under `old` with the same bytes."""
    if new.is_file():
        return old.is_file() and new.read_bytes() == old.read_bytes()
    return old.is_dir() and all(_same_files(p, old / p.relative_to(new))
                                for p in new.rglob("*") if p.is_file())


def _safe_extract(archive: Path, folder: Path, ours: bool) -> None:
    """Unzip into folder, refusing members that would land outside it (zip-slip). An
    entry already there is replaced only if this harness unpacked it (`ours`); a
    hand-placed copy is kept when it matches the archive and refused otherwise."""
    root = folder.resolve()
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            target = (root / info.filename).resolve()
            if info.filename.startswith(("/", "\\")) or (target != root and root not in
                                                         target.parents):
                raise DownloadError(f"{archive}: member {info.filename!r} escapes {folder}; "
                                    "refusing to extract")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise DownloadError(f"{archive}: member {info.filename!r} is a symlink; "
                                    "refusing to extract")
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=folder))
        try:
            zf.extractall(tmp)
            for entry in sorted(tmp.iterdir()):
                dest = folder / entry.name
                if (dest.exists() or dest.is_symlink()) and not ours:
                    if _same_files(entry, dest):
                        continue
                    raise DownloadError(f"{dest} exists, was not unpacked by this harness and "
                                        f"differs from {archive}; move it away and rerun")
            for entry in sorted(tmp.iterdir()):
                dest = folder / entry.name
                if (dest.exists() or dest.is_symlink()) and not ours:
                    continue  # identical hand-placed copy: kept
                if dest.is_dir() and not dest.is_symlink():
                    shutil.rmtree(dest)
                elif dest.exists() or dest.is_symlink():
                    dest.unlink()
                os.replace(entry, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _new_dirs(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    out = []
    for d in (folder, *folder.parents):
        if d.exists():
            break
        out.append(d)
    return out


def _clean_up(folder: Path, created: list[Path]) -> None:
    """After a failure: remove empty partial files and the directories this call created
    if they are empty; a non-empty .part is kept so that the next run resumes it."""
    if folder.is_dir():
        for part in folder.glob("*.part"):
            if part.is_file() and part.stat().st_size == 0:
                part.unlink()
    for d in created:
        try:
            d.rmdir()
        except OSError:
            break


def download_dataset(name: str, dest: Path, base_url: str | None = None,
                     progress: bool = True, *, timeout: float = 60.0) -> Path:
    """Fetch every file of dataset `name` into `dest/<name>/` and return that folder.

    Files already present are verified, not fetched again; `base_url` replaces the scheme
    and host of every URL (tests, mirrors); `timeout` bounds each network wait (seconds).
    A failure leaves no directory or empty file behind that this call created.
    """
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout) or timeout <= 0):
        raise OptionError(f"--timeout must be a positive number of seconds, got {timeout!r}")
    key = resolve_name(name)
    source = download_source(key)
    assert source is not None  # resolve_name returns downloadable names only
    folder = Path(dest) / key
    created = _new_dirs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _download_all(source, folder, base_url, timeout, progress)
    except BaseException:
        _clean_up(folder, created)
        raise
    return folder


def _download_all(source: Source, folder: Path, base_url: str | None, timeout: float,
                  progress: bool) -> None:
    for remote in source.files:
        url = _url(remote, base_url)
        final = folder / remote.filename
        recorded = _read_recorded(folder)
        expected = remote.sha256 or recorded.get(remote.filename)
        if final.is_file():
            sha, problem = _verify(final, remote, expected)
            if problem is not None:
                raise DownloadError(f"{final} exists but does not match ({problem}); "
                                    "delete it and rerun to download it again")
        else:
            sha = _download_guarded(source, remote, url, folder, expected, timeout, progress)
        if recorded.get(remote.filename) != sha:
            _record(folder, remote.filename, sha, remote.url)
        marker = folder / f".{remote.filename}.extracted"
        if remote.extract and not (marker.is_file() and marker.read_text().strip() == sha):
            try:
                _safe_extract(final, folder, ours=marker.is_file())
            except zipfile.BadZipFile as err:
                raise DownloadError(f"{final} is not a valid zip ({err}); delete it and "
                                    "rerun") from err
            marker.write_text(sha + "\n")


def _download_guarded(source: Source, remote: RemoteFile, url: str, folder: Path,
                      expected: str | None, timeout: float, progress: bool) -> str:
    """_download_one with network failures turned into actionable DownloadErrors."""
    try:
        return _download_one(remote, url, folder, expected, timeout, progress)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}. "
                            + _manual_hint(source, folder)) from err
    except (http.client.HTTPException, ConnectionError) as err:
        if _unreachable(err):
            raise _offline_error(url, err, source, folder) from err
        raise DownloadError(f"{url}: transfer interrupted ({err!r}); rerun to resume the "
                            "partial download") from err
    except OSError as err:  # URLError is an OSError
        if _unreachable(err):
            raise _offline_error(url, err, source, folder) from err
        if isinstance(err, urllib.error.URLError):
            raise DownloadError(f"{url}: {err.reason}") from err
        raise  # local trouble (disk full, permissions): the OS message is the clearest


def _offline_error(url: str, err: BaseException, source: Source,
                   folder: Path) -> DownloadError:
    reason = getattr(err, "reason", None) or err
    return DownloadError(
        f"could not reach {url} ({reason}): this machine appears to be offline (or the host "
        f"is down). Any partial download is kept and resumed next time. "
        + _manual_hint(source, folder))
