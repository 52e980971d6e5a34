"""Segmentation: DeepLab backends, IoU, classification agreement, overlays and DeepLabV3+ training.

Every public name of the subpackage's modules is readable here too, imported on first
use (see ``cnnlab._exports``).
"""

from cnnlab._exports import lazy_exports

_EXPORTS = {
    "VOC_CLASS_MAPS": "agreement",
    "read_image": "agreement",
    "agreement_table": "agreement",
    "agreement_summary": "agreement",
    "plot_agreement_failures": "agreement",
    "DEEPLAB_DIR_ENV": "deeplab",
    "DEFAULT_DEEPLAB_MODEL": "deeplab",
    "DeepLabSpec": "deeplab",
    "DEEPLAB_MODELS": "deeplab",
    "VOC_CLASSES": "deeplab",
    "deeplab_model_path": "deeplab",
    "Segmenter": "deeplab",
    "DeepLabSegmenter": "deeplab",
    "class_fractions": "deeplab",
    "dominant_class": "deeplab",
    "load_deeplab_models": "deeplab",
    "segmentation_confusion": "iou",
    "per_class_iou": "iou",
    "mean_iou": "iou",
    "class_palette": "overlays",
    "class_colour": "overlays",
    "FIXED_COLOURS": "overlays",
    "voc_colormap": "overlays",
    "colorize_mask": "overlays",
    "overlay": "overlays",
    "plot_segmentation": "overlays",
    "AUTOTUNE": "training",
    "IMAGE_SUFFIXES": "training",
    "find_mask_pairs": "training",
    "split_pairs": "training",
    "read_mask": "training",
    "count_classes": "training",
    "mask_dataset": "training",
    "stride_layers": "training",
    "HEAD_BN_MOMENTUM": "training",
    "build_deeplabv3_plus": "training",
    "KerasSegmenter": "training",
    "SegmentationRun": "training",
    "train_segmenter": "training",
    "plot_miou_history": "training",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
