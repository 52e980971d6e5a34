"""The mixed-data model registry: which inputs each model of notebook 07 uses.

Plain data (no Keras), so ``cnnlab list`` and ``cnnlab mixed --help`` read it without loading
TensorFlow; the builders are in :mod:`cnnlab.tabular.models`.
"""

from __future__ import annotations

# name -> (uses the tabular columns, uses the photos, description)
MIXED_MODELS: dict[str, tuple[bool, bool, str]] = {
    "mlp": (True, False, "MLP on the tabular columns"),
    "cnn": (False, True, "CNN from scratch on the four photos"),
    "transfer": (False, True, "frozen ImageNet backbone over the four photos + dense head"),
    "fusion": (True, True, "late fusion of tabular MLP and transfer branches, trained jointly"),
    "frozen_fusion": (True, True, "the saved mlp and transfer models' branches, frozen, "
                                  "+ a new dense head"),
}


def uses_tabular(name: str) -> bool:
    """Whether mixed-data model ``name`` reads the tabular columns."""
    return MIXED_MODELS[name][0]


def uses_photos(name: str) -> bool:
    """Whether mixed-data model ``name`` reads the photos."""
    return MIXED_MODELS[name][1]
