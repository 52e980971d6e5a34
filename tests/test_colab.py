"""The notebooks' Colab setup cell, executed with Colab simulated (no network, no install)."""

import json
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest

from cnnlab import colab

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("0*.ipynb"))


def _setup_cell(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return next(c.source for c in notebook.cells if c.cell_type == "code")


@pytest.fixture()
def fake_colab(monkeypatch, tmp_path):
    """google.colab stubbed; subprocess, chdir and file writes recorded instead of run."""
    calls, written, setups = [], {}, []
    module = types.ModuleType("google.colab")
    module.userdata = types.SimpleNamespace(get=lambda name: None)
    module.drive = types.SimpleNamespace(mount=lambda path: calls.append(["mount", path]))
    monkeypatch.setitem(sys.modules, "google.colab", module)

    def run(command, **kwargs):
        calls.append(list(command))
        return subprocess.CompletedProcess(command, 0, stdout="tensorflow==2.20.0\n")

    class Recorder:
        def __init__(self, path, mode="r"):
            self.path = path

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            written[self.path] = text

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr("os.chdir", lambda path: calls.append(["chdir", path]))
    monkeypatch.setattr(colab, "setup", lambda root, use_drive=False: setups.append(
        (root, use_drive)))
    return types.SimpleNamespace(calls=calls, written=written, setups=setups, open=Recorder)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_cell_on_colab_clones_and_installs_without_touching_tensorflow(path, fake_colab):
    code = _setup_cell(path)
    exec(compile(code, str(path), "exec"), {"open": fake_colab.open, "__name__": "cell"})
    clone, freeze, install, chdir = fake_colab.calls
    assert clone[:4] == ["git", "clone", "--depth", "1"] and clone[-1] == "/content/cnnlab"
    assert freeze[1:] == ["-m", "pip", "list", "--format=freeze"]
    assert fake_colab.written == {"/content/colab-preinstalled.txt": "tensorflow==2.20.0\n"}
    constraints = install[install.index("-c") + 1]
    assert constraints == "/content/colab-preinstalled.txt"  # preinstalled versions are pinned
    assert install[install.index("-r") + 1] == "/content/cnnlab/requirements.txt"
    assert "tensorflow" not in " ".join(install)
    assert chdir == ["chdir", "/content/cnnlab/notebooks"]
    assert fake_colab.setups == [("/content/cnnlab", False)]


def test_setup_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
    exec(_setup_cell(NOTEBOOKS[0]), {"__name__": "cell"})


def test_kaggle_credentials_from_secrets_or_upload(monkeypatch, tmp_path, fake_colab):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert colab.kaggle_credentials(tmp_path / "none.json") == "none"
    upload = tmp_path / "kaggle.json"
    upload.write_text(json.dumps({"username": "u", "key": "k"}))
    assert colab.kaggle_credentials(upload) == "uploaded kaggle.json"
    target = tmp_path / ".kaggle" / "kaggle.json"
    assert target.stat().st_mode & 0o777 == 0o600
    secrets = {"KAGGLE_USERNAME": "me", "KAGGLE_KEY": "secret"}
    sys.modules["google.colab"].userdata = types.SimpleNamespace(get=secrets.get)
    assert colab.kaggle_credentials(upload) == "colab secrets"


def test_keep_on_drive_moves_local_work_and_links(tmp_path):
    root, drive = tmp_path / "repo", tmp_path / "drive" / "MyDrive" / "cnnlab"
    (root / "models").mkdir(parents=True)
    (root / "models" / "cards-x.h5").write_text("model")
    drive.parent.mkdir(parents=True)
    linked = colab.keep_on_drive(root, drive)
    assert [p.name for p in linked] == ["data", "models", "checkpoints"]
    assert (root / "models").is_symlink() and (drive / "models" / "cards-x.h5").is_file()
    with pytest.raises(FileNotFoundError, match="mount Google Drive"):
        colab.keep_on_drive(root, tmp_path / "nodrive" / "x")


def test_accelerator_report_on_this_machine():
    report = colab.accelerator_report()
    assert report["accelerator"] in {"CPU", "GPU", "TPU"}
    assert report["strategy"].startswith(("default", "Mirrored", "TPU"))
