"""Deployment: model files (.keras/.h5), TFLite export and inference on new files.

Every public name of the subpackage's modules is readable here too, imported on first
use (see ``cnnlab._exports``).
"""

from cnnlab._exports import lazy_exports

_EXPORTS = {
    "H5CompatAdd": "export",
    "H5CompatMultiply": "export",
    "H5_CUSTOM_OBJECTS": "export",
    "MODEL_FORMATS": "export",
    "save_model": "export",
    "load_model": "export",
    "load_metadata": "export",
    "list_models": "export",
    "TFLITE_QUANTIZATIONS": "export",
    "CALIBRATION_IMAGES": "export",
    "tflite_path": "export",
    "export_tflite": "export",
    "tflite_interpreter": "export",
    "tflite_predict": "export",
    "compare_tflite": "export",
    "split_images": "export",
    "resolve_model_file": "export",
    "export_deployment": "export",
    "Classifier": "inference",
    "demo_images": "inference",
    "pick_files": "inference",
    "best_validation_accuracy": "inference",
    "choose_model": "inference",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
