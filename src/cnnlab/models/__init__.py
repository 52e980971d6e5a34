"""Models: the backbone registry, custom CNNs, transfer models (backbone + head) and architecture
diagrams.

Every public name of the subpackage's modules is readable here too, imported on first
use (see ``cnnlab._exports``).
"""

from cnnlab._exports import lazy_exports

_EXPORTS = {
    "layer_table": "summary",
    "KINDS": "architecture",
    "output_shapes_provided": "architecture",
    "layered_view": "architecture",
    "summary_frame": "architecture",
    "plot_architecture": "architecture",
    "WEIGHTS_DIR_ENV": "backbones",
    "BackboneSpec": "backbones",
    "BACKBONES": "backbones",
    "get_backbone_spec": "backbones",
    "WeightsChoice": "backbones",
    "WEIGHTS_MODES": "backbones",
    "resolve_weights": "backbones",
    "retail_cnn": "custom",
    "vehicles_cnn_bn": "custom",
    "CUSTOM_MODELS": "custom",
    "build_custom_model": "custom",
    "BackbonePreprocessing": "transfer",
    "build_backbone": "transfer",
    "fine_tune_boundary": "transfer",
    "SCRATCH_BN_MOMENTUM": "transfer",
    "build_transfer_model": "transfer",
    "find_backbone": "transfer",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
