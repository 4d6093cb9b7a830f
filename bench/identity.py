"""Which model is on disk: the sha256 of its weight and tokenizer files.

What a system loads from outside the protocol (an LLM backbone, a text encoder) enters
its cell key by content, through System.configure. A backbone is identified by what it
contains, not where it is or what its config says:
two checkpoints of one config and different weights, or a checkpoint replaced at the
same path (a new snapshot in the Hugging Face cache), are different backbones for every
cache key. Hashing 15 GB takes a minute, so each file's sha256 is remembered in a small
JSON file by (resolved path, size, mtime, ctime, inode): a file written or replaced in
place changes its mtime or ctime (ctime cannot be set back), so it is hashed again.
The file is `$MOLOREC_HASH_CACHE`, else `$XDG_CACHE_HOME/molorec-bench/file-sha256.json`
(`~/.cache/...`); losing it only costs rehashing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from protocols.digest import file_sha256
from protocols.store import atomic_write_text

FORMAT = "molorec-file-sha256-1"
# the files a checkpoint directory is loaded from (weights, configs, tokenizer, chat
# template); READMEs, licences and hidden files do not change a number
SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken",
            ".jinja", ".gguf", ".py")
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
LOUD_BYTES = 1 << 30  # say so before hashing a file this large


class ModelFilesError(FileNotFoundError):
    """A path that does not hold a model."""


def cache_file() -> Path:
    env = os.environ.get("MOLOREC_HASH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "molorec-bench" / "file-sha256.json"


def _load(path: Path) -> dict | None:
    """The remembered hashes; None when the file is not ours (then it is never written)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"format": FORMAT, "files": {}}
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    if not isinstance(data.get("files"), dict):
        return None
    return data


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_sha256_cached(path: str | Path) -> str:
    """sha256 of a file, hashed once per (path, size, mtime, ctime, inode)."""
    real = Path(path).expanduser().resolve()
    st = real.stat()
    store = cache_file()
    data = _load(store)
    entry = (data or {}).get("files", {}).get(str(real))
    if isinstance(entry, list) and len(entry) == 2 and entry[0] == _stamp(st):
        return str(entry[1])
    if st.st_size >= LOUD_BYTES:
        print(f"hashing {real} ({st.st_size / 2**30:.1f} GiB) once; remembered in {store}",
              file=sys.stderr)
    sha = file_sha256(real)
    if real.stat().st_mtime_ns != st.st_mtime_ns:  # written while we read it
        raise ModelFilesError(f"{real} changed while it was hashed; rerun when it is complete")
    if data is not None:
        data = _load(store) or data  # another process may have added entries meanwhile
        data["files"][str(real)] = [_stamp(st), sha]
        try:
            atomic_write_text(store, json.dumps(data, indent=0, sort_keys=True) + "\n")
        except OSError:  # a read-only home: hash again next time
            pass
    return sha


def model_files(directory: Path) -> list[Path]:
    """The files of a checkpoint directory that loading it reads (top level)."""
    return sorted(p for p in directory.iterdir()
                  if not p.name.startswith(".") and p.suffix in SUFFIXES and p.is_file())


def model_sha256(path: str | Path) -> str:
    """The identity of a model: the sha256 of a single file (.gguf), or of the names and
    sha256s of a checkpoint directory's weight, config and tokenizer files."""
    p = Path(path).expanduser()
    if p.is_file():
        return file_sha256_cached(p)
    if not p.is_dir():
        raise ModelFilesError(f"{str(p)!r} does not exist")
    files = model_files(p)
    if not any(f.suffix in WEIGHTS for f in files):
        raise ModelFilesError(f"{str(p)!r} holds no model weights (*.safetensors, *.bin)")
    listing = [[f.name, file_sha256_cached(f)] for f in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()
