"""TensorFlow's start-up lines, kept out of every cnnlab output.

TensorFlow 2.19+ writes a few C++ lines to stderr while it is imported ("oneDNN custom
operations are on", "Could not find cuda drivers on your machine", "All log messages before
absl::InitializeLog() ..."), and no environment variable silences them:
``TF_CPP_MIN_LOG_LEVEL`` does not reach the messages logged before absl is initialised
(tensorflow/tensorflow#100442). They say nothing about the user's run, yet they filled every
notebook output and CLI run. :func:`install` makes the first ``import tensorflow`` of the
process run with file descriptor 2 captured; the captured lines that match
:data:`STARTUP_LOG_LINES` are dropped and every other line is written back to stderr, so a
real error from the import is never hidden.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

STARTUP_LOG_LINES = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ (cudart_stub|cuda_dnn|cuda_fft|cuda_blas|cpu_feature_guard|"
    r"port)\.cc:\d+\] .*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate "
    r"compiler flags\."
    r"|.*oneDNN custom operations are on\..*"
    r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    r"|\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption\..*)$")


def keep_line(line: str) -> bool:
    """Whether a stderr line is worth showing (not one of :data:`STARTUP_LOG_LINES`)."""
    return not STARTUP_LOG_LINES.match(line.rstrip("\r\n"))


@contextlib.contextmanager
def quiet_native_logs():
    """Captures fd 2 (where C++ code logs) for the block, then replays all but known lines.

    TensorFlow's and LiteRT's native code write their start-up lines (:data:`STARTUP_LOG_LINES`)
    straight to file descriptor 2, past ``sys.stderr`` and Python's logging, so only a capture
    of the descriptor drops them. Every other line is written to ``sys.stderr`` after the
    block, errors included.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True) if keep_line(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` with fd 2 captured, then replays what matters."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with quiet_native_logs():
            self.loader.exec_module(module)


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual and wraps its loader in :class:`_QuietLoader`, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiets the first ``import tensorflow`` of this process (no-op if already imported).

    Also sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user chose a level, which silences the
    C++ messages logged after start-up.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or any(isinstance(f, _TensorFlowFinder)
                                          for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorFlowFinder())
