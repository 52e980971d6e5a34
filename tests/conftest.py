"""Shared fixtures: the real assets in ../shared, and a throw-away project folder."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    return Path(os.environ.get("CNNLAB_SHARED_DIR") or REPO.parent / "shared")


def _expected_minutes(item) -> float:
    slow = item.get_closest_marker("slow")
    return slow.kwargs.get("minutes", 1) if slow else 0


def pytest_collection_modifyitems(config, items):
    """The longest tests first (``slow(minutes=...)``, then other ``slow`` ones): ``make test``
    hands tests to its pytest-xdist workers one at a time in this order (``--dist
    loadgroup``), so the two end-to-end runs start at once on different workers instead of
    one after the other at the end."""
    items.sort(key=lambda item: -_expected_minutes(item))


@pytest.fixture(autouse=True)
def close_figures():
    """Closes the figures a test made: plot functions return theirs open, for the caller."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The real assets folder (../shared or $CNNLAB_SHARED_DIR); skip, or fail in CI."""
    path = shared_path()
    if not path.is_dir():
        reason = (f"shared assets folder {path} not found; put it beside the checkout as "
                  f"../shared or set CNNLAB_SHARED_DIR")
        if os.environ.get("CNNLAB_REQUIRE_SHARED") == "1":
            pytest.fail(f"CNNLAB_REQUIRE_SHARED=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh project root (notebooks copied) that every cnnlab function resolves to."""
    from cnnlab.config import project_dirs

    root = tmp_path / "project"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.setenv("CNNLAB_ROOT", str(root))
    return project_dirs(root)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """The generated sample dataset (small), shared by the tests of a session."""
    from cnnlab.data.synthetic import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("sample"), per_class=15, size=48)


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30),
                fmt: str | None = None, **save) -> Path:
    """Writes a random image of ``mode`` to ``path`` with Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "P" else rgb.convert("P", palette=Image.ADAPTIVE)
    image.save(path, format=fmt, **save)
    return path


def bomb_png(path: Path, side: int = 40_000) -> Path:
    """A 1-bit ``side x side`` PNG header and one row of data (Pillow refuses it on opening)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    row = zlib.compress(bytes(1 + side // 8))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row)
                     + chunk(b"IEND", b""))
    return path


# Runs before the code of run_python: arms a SIGKILL of the process at one named moment of a
# run by wrapping a public hook (a callback method, a stage function, Model.save). Tests only:
# the package itself has no kill switch.
KILL_HOOKS = '''
import os, signal, sys
import keras


def _die():
    os.kill(os.getpid(), signal.SIGKILL)  # no handler runs, nothing is flushed


def _arm(point):
    if point == "mid_epoch":  # after the second batch of the second epoch
        from cnnlab.training.callbacks import EpochTimer
        begin = EpochTimer.on_epoch_begin

        def on_epoch_begin(self, epoch, logs=None):
            self.kill_epoch = epoch
            begin(self, epoch, logs)

        def on_train_batch_end(self, batch, logs=None):
            if self.kill_epoch == 1 and batch == 1:
                _die()

        EpochTimer.on_epoch_begin = on_epoch_begin
        EpochTimer.on_train_batch_end = on_train_batch_end
    elif point == "during_backup":  # the files a kill inside Keras' in-place write leaves
        write = keras.callbacks.BackupAndRestore.on_epoch_end

        def on_epoch_end(self, epoch, logs=None):
            write(self, epoch, logs)
            if epoch == 1:
                for name in os.listdir(self.backup_dir):
                    path = os.path.join(self.backup_dir, name)
                    os.truncate(path, os.path.getsize(path) // 2)
                _die()

        keras.callbacks.BackupAndRestore.on_epoch_end = on_epoch_end
    elif point == "between_stages":  # stage 1 recorded finished, stage 2 not begun
        from cnnlab.training import fine_tuning
        fine_tuning._fine_tune_stage = lambda *args, **kwargs: _die()
    elif point == "during_save":  # the first file of the model's temporary folder written
        save = keras.Model.save

        def killing_save(self, filepath, *args, **kwargs):
            save(self, filepath, *args, **kwargs)
            if ".tmp" in str(filepath):
                _die()

        keras.Model.save = killing_save
    elif point != "none":
        raise ValueError(f"unknown kill point {point!r}")


_arm(sys.argv.pop(1))
'''

# run_python code that runs the cnnlab command line with the remaining arguments.
CLI = "from cnnlab import cli\nsys.exit(cli.main(sys.argv[1:]))\n"


def run_python(code: str, *args: str, point: str = "none", cwd: Path | None = None,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh Python with ``args``, SIGKILLed at ``point`` (see KILL_HOOKS).

    ``point`` is ``mid_epoch``, ``during_backup``, ``between_stages``, ``during_save`` or
    ``none`` (run to the end).
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-c", KILL_HOOKS + code, point, *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def leftovers(*folders: Path) -> list[str]:
    """Entries under ``folders`` that an interrupted write leaves: hidden or ``.tmp`` names."""
    return sorted(str(path) for folder in folders for path in Path(folder).rglob("*")
                  if path.name.startswith(".") or ".tmp" in path.name)
