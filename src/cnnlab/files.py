"""Safe writes: every file a run produces is written to a temporary name, then renamed.

An interrupted run therefore never leaves a half-written model, manifest or table behind, and
an existing model is moved aside to ``previous/`` rather than overwritten silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` if the block succeeds.

    The temporary name keeps the suffix (Keras picks the format from it: ``.keras``, ``.h5``).
    On an exception the temporary file is removed and ``path`` is left untouched.

    Args:
        path: Final destination.

    Yields:
        The temporary path to write to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{''.join(path.suffixes[-1:])}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# Temporary names of atomic_path, save_weights_atomic, export.save_model and the resume
# backups: ".<name>.tmp<pid>" with an optional suffix (".csv", ".weights.h5").
_TEMPORARY = re.compile(r"^\..+?\.tmp(\d+)(\..*)?$")


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Removes the temporary files and folders that killed processes left in ``folder``.

    A process killed (SIGKILL, out of memory) between writing a temporary name and
    renaming it leaves ``.<name>.tmp<pid>...`` behind; the final name is never half-written.
    Entries of processes still running on this machine are kept (they may be mid-write).

    Args:
        folder: A folder such as ``models/`` or ``checkpoints/<run>/``.
        recursive: Also look in its subfolders.

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob(".*") if recursive else folder.glob(".*")):
        match = _TEMPORARY.match(path.name)
        if not match or int(match.group(1)) == os.getpid() or _is_running(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically and returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    """Writes ``obj`` as indented JSON to ``path`` atomically and returns the path."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | os.PathLike):
    """Reads a JSON file; the error names the file when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return json.loads(path.read_text(encoding="utf-8"))


def keep_previous(path: str | os.PathLike) -> Path | None:
    """Moves an existing file or folder to ``<parent>/previous/<stem>-<mtime><suffix>``.

    Args:
        path: A file or folder (a saved model) about to be replaced.

    Returns:
        Where the old one went (``-2``, ``-3``... appended if that name is taken), or None if
        there was none.
    """
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    stem, suffix = (path.name, "") if path.is_dir() else (path.stem, path.suffix)
    target = path.parent / "previous" / f"{stem}-{stamp}{suffix}"
    count = 1
    while target.exists():
        count += 1
        target = path.parent / "previous" / f"{stem}-{stamp}-{count}{suffix}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Returns the hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
