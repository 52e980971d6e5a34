"""The package's shape: subpackage exports, a CLI that loads no TensorFlow, quiet start-up."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab import startup_logs

SRC = Path(__file__).resolve().parents[1] / "src"
SUBPACKAGES = ("data", "models", "training", "evaluation", "segmentation", "deploy")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_exported_name_resolves_to_its_module(package):
    module = importlib.import_module(f"cnnlab.{package}")
    assert module.__all__, f"cnnlab.{package} exports nothing"
    for name in module.__all__:
        source = importlib.import_module(f"cnnlab.{package}.{module._EXPORTS[name]}")
        assert getattr(module, name) is getattr(source, name), f"cnnlab.{package}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'fine_tun'"):
        module.fine_tun  # noqa: B018


def test_the_registries_and_the_help_load_no_tensorflow():
    result = _python(
        "import sys\n"
        "from cnnlab import cli\n"
        "assert cli.main(['list']) == 0\n"
        "try:\n"
        "    cli.main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules]\n"
        "print('heavy:', heavy)\n")
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout
    assert "backbones: inception_v3, vgg16, mobilenet_v2" in result.stdout
    assert "mixed-data models: mlp, cnn, transfer, fusion, frozen_fusion" in result.stdout


def test_importing_tensorflow_through_cnnlab_prints_no_start_up_lines():
    result = _python("import cnnlab, keras, tensorflow as tf\n"
                     "print(float(tf.reduce_sum(tf.ones(3))))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3.0"
    assert not [line for line in result.stderr.splitlines()
                if not startup_logs.keep_line(line)], result.stderr


class _NoisyLoader:
    """Stands in for TensorFlow's loader: writes start-up noise and one real line to fd 2."""

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1796229225.308913   28278 cudart_stub.cc:31] Could not find "
                    b"cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"libfoo.so: cannot open shared object file\n")


def test_quiet_import_drops_the_start_up_lines_and_keeps_every_other_line(capfd):
    startup_logs._QuietLoader(_NoisyLoader()).exec_module(None)
    captured = capfd.readouterr()
    assert captured.err == "libfoo.so: cannot open shared object file\n"


def _requirements(lines: list[str]) -> set[str]:
    """Requirement lines, normalised (name, extras, specifiers, marker); comments skipped."""
    lines = [line.split("#", 1)[0].strip() for line in lines]
    lines = [line for line in lines if line]
    try:
        from packaging.requirements import Requirement
        from packaging.utils import canonicalize_name
    except ImportError:  # packaging absent: compare the lines as written, spaces removed
        return {line.replace(" ", "").lower() for line in lines}
    normalised = set()
    for line in lines:
        requirement = Requirement(line)
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        marker = f"; {requirement.marker}" if requirement.marker else ""
        normalised.add(f"{canonicalize_name(requirement.name)}{extras}"
                       f"{requirement.specifier}{marker}")
    return normalised


def test_pyproject_declares_the_ranges_of_requirements_txt():
    """``pip install .`` gets the runtime requirements; Colab installs requirements.txt."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    root = SRC.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = (root / "requirements.txt").read_text().splitlines()
    assert declared, "pyproject.toml declares no runtime dependency"
    assert _requirements(declared) == _requirements(listed)
    assert len(_requirements(declared)) == len(declared)  # no requirement listed twice
