"""cnnlab: a tested reference implementation of a CNN course project (TensorFlow/Keras 3).

Modules, one per pipeline stage: ``datasets`` (registry, download, manifest), ``data``
(tf.data pipelines), ``backbones`` (keras.applications registry), ``models`` (custom CNNs,
transfer model), ``train`` (fit, fine_tune, run folders), ``evaluate`` (metrics, leaderboard),
``segment`` (DeepLabV3), ``inference`` (deployed use), ``plots`` and ``architecture``
(figures), ``export`` (.keras/.h5), ``pipeline`` and ``cli`` (``cnnlab run``).
"""

import logging

from cnnlab import startup_logs

# TensorFlow's C++ start-up lines (oneDNN notice, "could not find CUDA" on CPU machines) would
# fill every notebook output and CLI run; users can still set their own level before importing
# cnnlab.
startup_logs.install()


class _DropKnownNoise(logging.Filter):
    """Drops two warnings that say nothing about the user's run."""

    NOISE = (
        "triggered tf.function retracing",  # one trace per model size, by design here
        "saving your model as an HDF5 file",  # .h5 is written on purpose, next to .keras
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in self.NOISE)


for _name in ("tensorflow", "absl"):
    logging.getLogger(_name).addFilter(_DropKnownNoise())

__version__ = "0.1.0"
