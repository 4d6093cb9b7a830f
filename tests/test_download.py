"""download_dataset against a local HTTP server only (127.0.0.1, random port): no internet."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocols import datasets as ds
from protocols import download as dl
from protocols.datasets import DatasetSpec, RemoteFile
from protocols.download import DownloadError, download_dataset


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root` by URL path, honouring `Range: bytes=N-`, and logs requests."""

    root: Path
    log: list[tuple[str, str | None]]
    honour_range = True

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.log.append((self.path, self.headers.get("Range")))
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, list]]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "www"
    root.mkdir()
    log: list[tuple[str, str | None]] = []
    handler = type("H", (_Handler,), {"root": root, "log": log})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, log
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _serve(root: Path, url_path: str, data: bytes) -> None:
    target = root / url_path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _add_source(monkeypatch: pytest.MonkeyPatch, name: str, *files: RemoteFile) -> None:
    """Register a dataset spec for the test (a dataset is one spec)."""
    monkeypatch.setitem(ds.BUILTIN, name, DatasetSpec(name, files=files,
                                                      homepage="https://example.org/"))


def test_full_download_verifies_and_extracts(server, tmp_path, monkeypatch):
    base, root, log = server
    payload = _zip_bytes({"toy/ratings.dat": b"1::2::5::100\n", "toy/movies.dat": b"2::X::Y\n"})
    _serve(root, "/files/toy.zip", payload)
    sha = hashlib.sha256(payload).hexdigest()
    md5 = hashlib.md5(payload).hexdigest()
    _add_source(monkeypatch, "toy", RemoteFile("https://example.org/files/toy.zip", sha256=sha,
                                               md5=md5, extract=True))
    folder = download_dataset("toy", tmp_path / "data", base_url=base, progress=False)
    assert folder == tmp_path / "data" / "toy"
    assert (folder / "toy.zip").read_bytes() == payload
    assert (folder / "toy" / "ratings.dat").read_bytes() == b"1::2::5::100\n"
    assert not (folder / "toy.zip.part").exists()
    assert json.loads((folder / "checksums.json").read_text())["toy.zip"]["sha256"] == sha
    # second call: verified from disk, nothing fetched again
    n = len(log)
    download_dataset("toy", tmp_path / "data", base_url=base, progress=False)
    assert len(log) == n


def test_checksum_mismatch_leaves_nothing(server, tmp_path, monkeypatch):
    base, root, _ = server
    _serve(root, "/f/a.gz", b"actual bytes")
    _add_source(monkeypatch, "bad", RemoteFile("https://x/f/a.gz", sha256="0" * 64))
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dataset("bad", tmp_path, base_url=base, progress=False)
    assert not (tmp_path / "bad" / "a.gz").exists()
    assert not (tmp_path / "bad" / "a.gz.part").exists()


def test_md5_only_source_is_checked(server, tmp_path, monkeypatch):
    base, root, _ = server
    _serve(root, "/f/a.zip", b"not what grouplens published")
    _add_source(monkeypatch, "md5", RemoteFile("https://x/f/a.zip", md5="f" * 32))
    with pytest.raises(DownloadError, match="md5"):
        download_dataset("md5", tmp_path, base_url=base, progress=False)
    assert not (tmp_path / "md5" / "a.zip").exists()


def test_resume_from_partial_file_uses_range(server, tmp_path, monkeypatch):
    base, root, log = server
    data = bytes(range(256)) * 400
    _serve(root, "/f/big.bin", data)
    _add_source(monkeypatch, "big", RemoteFile("https://x/f/big.bin",
                                               sha256=hashlib.sha256(data).hexdigest()))
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "big.bin.part").write_bytes(data[:12345])
    download_dataset("big", tmp_path, base_url=base, progress=False)
    assert (folder / "big.bin").read_bytes() == data
    assert log == [("/f/big.bin", "bytes=12345-")]


def test_corrupt_partial_file_is_restarted_once(server, tmp_path, monkeypatch):
    base, root, log = server
    data = b"good content " * 100
    _serve(root, "/f/c.bin", data)
    _add_source(monkeypatch, "c", RemoteFile("https://x/f/c.bin",
                                             sha256=hashlib.sha256(data).hexdigest()))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "c.bin.part").write_bytes(b"garbage!")
    download_dataset("c", tmp_path, base_url=base, progress=False)
    assert (tmp_path / "c" / "c.bin").read_bytes() == data
    assert [r for _, r in log] == ["bytes=8-", None]


def test_first_download_records_sha256_and_later_ones_verify(server, tmp_path):
    """A real spec's files with no published checksum: trust on first use."""
    base, root, _ = server
    path = "/data/amazon/productGraph/categoryFiles/"
    _serve(root, path + "reviews_Beauty_5.json.gz", b"reviews v1")
    _serve(root, path + "meta_Beauty.json.gz", b"meta v1")
    folder = download_dataset("amazon2014-Beauty", tmp_path, base_url=base, progress=False)
    recorded = json.loads((folder / "checksums.json").read_text())
    assert recorded["meta_Beauty.json.gz"]["sha256"] == hashlib.sha256(b"meta v1").hexdigest()
    assert recorded["meta_Beauty.json.gz"]["url"].startswith("https://snap.stanford.edu/")
    (folder / "meta_Beauty.json.gz").unlink()
    _serve(root, path + "meta_Beauty.json.gz", b"meta v2 (changed upstream)")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dataset("amazon2014-Beauty", tmp_path, base_url=base, progress=False)
    # a hand-placed copy that differs from the record is refused too
    (folder / "meta_Beauty.json.gz").write_bytes(b"tampered")
    with pytest.raises(DownloadError, match="does not match"):
        download_dataset("amazon2014-Beauty", tmp_path, base_url=base, progress=False)


def test_offline_message_names_url_and_folder(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    with pytest.raises(DownloadError) as info:
        download_dataset("ml-1m", tmp_path, base_url=f"http://127.0.0.1:{port}",
                         progress=False, timeout=5)
    msg = str(info.value)
    assert "offline" in msg
    assert f"http://127.0.0.1:{port}/datasets/movielens/ml-1m.zip" in msg
    assert str(tmp_path / "ml-1m") in msg
    assert not (tmp_path / "ml-1m" / "ml-1m.zip").exists()


def test_http_404_is_reported(server, tmp_path):
    base, _, _ = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset("ml-10m", tmp_path, base_url=base, progress=False)


def test_unknown_name_suggests(tmp_path):
    with pytest.raises(DownloadError, match="Did you mean 'ml-1m'"):
        download_dataset("ml1m", tmp_path)
    with pytest.raises(DownloadError, match="amazon2014-Toys_and_Games"):
        download_dataset("amazon2014-Toys_and_Game", tmp_path)
    assert dl.resolve_name("AMAZON2014-beauty") == "amazon2014-Beauty"


def test_zip_escaping_folder_is_rejected(server, tmp_path, monkeypatch):
    base, root, _ = server
    _serve(root, "/f/evil.zip", _zip_bytes({"ok.txt": b"fine", "../escaped.txt": b"evil"}))
    _add_source(monkeypatch, "evil", RemoteFile("https://x/f/evil.zip", extract=True))
    with pytest.raises(DownloadError, match="escapes"):
        download_dataset("evil", tmp_path / "d", base_url=base, progress=False)
    assert not (tmp_path / "d" / "escaped.txt").exists()
    assert not (tmp_path / "d" / "evil" / "ok.txt").exists()


def test_sources_cover_paper_datasets():
    for cat in ("Beauty", "Toys_and_Games", "Sports_and_Outdoors", "Video_Games"):
        files = [f.filename for f in ds.download_source(f"amazon2014-{cat}").files]
        assert files == [f"reviews_{cat}_5.json.gz", f"meta_{cat}.json.gz"]
    assert len([k for k in ds.downloadable() if k.startswith("amazon2014-")]) == 11
    assert ds.download_source("ml-1m").files[0].sha256 is not None
    assert all(f.extract for k in ("ml-1m", "ml-10m") for f in ds.download_source(k).files)
    assert ds.download_source("amazon2014-Unlisted") is None  # loads, but is not fetched
    assert ds.download_source("ml-100k") is None  # embedded


def test_downloaded_folder_feeds_the_loaders(server, tmp_path, monkeypatch):
    """The layouts download_dataset produces are the ones the raw loaders look for."""
    import gzip

    from protocols.raw_formats import load_amazon2014, load_movielens_dat

    base, root, _ = server
    path = "/data/amazon/productGraph/categoryFiles/"
    review = {"reviewerID": "U1", "asin": "B1", "unixReviewTime": 7}
    _serve(root, path + "reviews_Toys_and_Games_5.json.gz",
           gzip.compress((json.dumps(review) + "\n").encode()))
    _serve(root, path + "meta_Toys_and_Games.json.gz",
           gzip.compress(b"{'asin': 'B1', 'title': \"Kid's Kite\"}\n"))
    folder = download_dataset("amazon2014-Toys_and_Games", tmp_path, base_url=base,
                              progress=False)
    assert load_amazon2014(folder, "Toys_and_Games").titles == {"B1": "Kid's Kite"}

    payload = _zip_bytes({"ml-1m/ratings.dat": b"1::10::5::100\n",
                          "ml-1m/movies.dat": "10::Amélie (2001)::Comedy\n".encode("latin-1")})
    _serve(root, "/datasets/movielens/ml-1m.zip", payload)
    spec = ds.BUILTIN["ml-1m"]
    monkeypatch.setitem(ds.BUILTIN, "ml-1m", dataclasses.replace(spec, files=(RemoteFile(
        spec.files[0].url, sha256=hashlib.sha256(payload).hexdigest(), extract=True),)))
    folder = download_dataset("ml-1m", tmp_path, base_url=base, progress=False)
    data = load_movielens_dat(folder, "ml-1m")
    assert data.titles == {"10": "Amélie (2001)"} and len(data) == 1


def test_extraction_never_replaces_a_hand_placed_copy(server, tmp_path, monkeypatch):
    base, root, _ = server
    payload = _zip_bytes({"toy/ratings.dat": b"1::2::5::100\n"})
    _serve(root, "/f/toy.zip", payload)
    _add_source(monkeypatch, "toy", RemoteFile("https://x/f/toy.zip", extract=True))
    folder = tmp_path / "toy"
    (folder / "toy").mkdir(parents=True)
    (folder / "toy" / "ratings.dat").write_bytes(b"my own edit\n")
    with pytest.raises(DownloadError, match="was not unpacked by this harness"):
        download_dataset("toy", tmp_path, base_url=base, progress=False)
    assert (folder / "toy" / "ratings.dat").read_bytes() == b"my own edit\n"
    (folder / "toy" / "ratings.dat").write_bytes(b"1::2::5::100\n")  # identical: kept, fine
    (folder / "toy" / "notes.txt").write_text("mine")
    download_dataset("toy", tmp_path, base_url=base, progress=False)
    assert (folder / "toy" / "notes.txt").read_text() == "mine"


def test_a_profile_downloads_every_dataset_its_tables_read(tmp_path, monkeypatch, capsys):
    """`data download --profile paper`: the four targets and the nine general corpora."""
    from bench.cli import main
    from bench.profiles import AMAZON_GENERAL

    got = []
    monkeypatch.setattr(dl, "download_dataset",
                        lambda name, dest, **kw: got.append(name) or dest / name)
    assert main(["data", "download", "--profile", "paper", "--dest", str(tmp_path)]) == 0
    assert len(got) == 13 and len(set(got)) == 13
    assert {"ml-1m", "ml-10m", "amazon2014-Beauty", *AMAZON_GENERAL} <= set(got)
    assert main(["data", "download", "--profile", "cpu", "--dest", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out and len(got) == 13
    assert main(["data", "download", "--dest", str(tmp_path)]) == 2
    assert "give a dataset NAME or --profile" in capsys.readouterr().err
