"""Safe writes: every file a run produces is written to a temporary name, then renamed.

An interrupted run therefore never leaves a half-written model, manifest or table behind, and
an existing model is moved aside to ``previous/`` rather than overwritten silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
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
    """Moves an existing file to ``<folder>/previous/<stem>-<mtime><suffix>``.

    Args:
        path: A file about to be replaced.

    Returns:
        Where the old file went, or None if there was none.
    """
    path = Path(path)
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    target = path.parent / "previous" / f"{path.stem}-{stamp}{path.suffix}"
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
