"""Shared fixtures: the real assets in ../shared, and a throw-away project folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    return Path(os.environ.get("CNNLAB_SHARED_DIR") or REPO.parent / "shared")


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
