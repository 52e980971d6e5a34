"""Retail Product Checkout (RPC): labels from COCO annotations, and a one-off resize.

RPC (Wei et al. 2019, "RPC: A Large-Scale Retail Product Checkout Dataset",
arXiv:1901.07249; Kaggle ``diyer22/retail-product-checkout-dataset``) ships its 53,739
single-product training photos in ``train2019/`` with labels only in the COCO file
``instances_train2019.json``: ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``image_id``, ``bbox`` as ``[x, y, w, h]`` pixels, ``category_id``) and
``categories`` (``id``, ``name`` such as ``"1_puffed_food"`` = one of 200 products (SKUs),
``supercategory`` such as ``"puffed_food"`` = one of 17 classes). Each product is photographed
from many angles, so the views of one SKU are near-duplicates: the prepared tree puts them in
one folder per SKU (``<class>/<sku>/<file>``), which :func:`cnnlab.data.datasets.build_manifest`
treats as a group that never straddles train, validation and test.

The originals are 1,800-pixel JPEGs; :func:`prepare_rpc` decodes each once (Pillow, through
libjpeg's DCT scaling), crops it to a square around the product's box and saves it at
``size`` pixels, so that training never decodes a 5-megapixel photo again.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

from cnnlab.config import display_path
from cnnlab.data.images import to_rgb
from cnnlab.files import atomic_path, write_text

ANNOTATIONS = "instances_train2019.json"
IMAGES = "train2019"
BOX_MARGIN = 0.1  # share of the box's longer side added around it when cropping


def display_name(supercategory: str) -> str:
    """English display name of an RPC super-category: ``"puffed_food"`` -> ``"puffed food"``."""
    return supercategory.replace("_", " ").strip()


def read_coco_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Decodes the labels of a COCO-format annotation file with one product per image.

    An image with several boxes takes the category of the largest one (``boxes`` says how
    many there were); an image with no box is left out.

    Args:
        path: ``instances_train2019.json`` (or any COCO file in that layout).

    Returns:
        One row per labelled image: ``file_name``, ``width``, ``height``, ``sku`` (category
        ``name``), ``supercategory``, ``label`` (English display name of the super-category),
        ``bbox`` (``[x, y, w, h]`` of the largest box, pixels) and ``boxes``.

    Raises:
        ValueError: If the file lacks ``images``, ``annotations`` or ``categories``, or an
            annotation names an unknown category or image; the message names the file.
    """
    path = Path(path)
    try:
        coco = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-download the dataset") from error
    missing = [key for key in ("images", "annotations", "categories") if key not in coco]
    if missing:
        raise ValueError(f"{path} is not a COCO annotation file: it has no {missing}")
    categories = {c["id"]: c for c in coco["categories"]}
    images = {i["id"]: i for i in coco["images"]}
    best: dict[int, dict] = {}
    boxes: dict[int, int] = {}
    for annotation in coco["annotations"]:
        image_id, category_id = annotation["image_id"], annotation["category_id"]
        if category_id not in categories:
            raise ValueError(f"{path}: annotation {annotation.get('id')} has category_id "
                             f"{category_id}, which is not among its categories")
        if image_id not in images:
            raise ValueError(f"{path}: annotation {annotation.get('id')} refers to image "
                             f"{image_id}, which is not among its images")
        x, y, w, h = annotation["bbox"]
        boxes[image_id] = boxes.get(image_id, 0) + 1
        if image_id not in best or w * h > best[image_id]["area"]:
            best[image_id] = {"area": w * h, "bbox": [x, y, w, h], "category_id": category_id}
    rows = []
    for image_id, chosen in best.items():
        image, category = images[image_id], categories[chosen["category_id"]]
        rows.append({
            "file_name": image["file_name"], "width": image.get("width"),
            "height": image.get("height"), "sku": category["name"],
            "supercategory": category["supercategory"],
            "label": display_name(category["supercategory"]), "bbox": chosen["bbox"],
            "boxes": boxes[image_id],
        })
    return pd.DataFrame(rows).sort_values("file_name").reset_index(drop=True)


def find_rpc_files(root: str | os.PathLike) -> tuple[Path, Path]:
    """Finds ``instances_train2019.json`` and ``train2019/`` below a download.

    Raises:
        FileNotFoundError: If either is missing, naming what was looked for.
    """
    root = Path(root)
    found = sorted(root.rglob(ANNOTATIONS), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"{ANNOTATIONS} not found below {display_path(root)}; download "
                                f"diyer22/retail-product-checkout-dataset and pass its folder")
    images = found[0].parent / IMAGES
    if not images.is_dir():
        raise FileNotFoundError(f"{display_path(images)} not found next to {found[0].name}")
    return found[0], images


def square_crop(bbox: list[float], width: int, height: int,
                margin: float = BOX_MARGIN) -> tuple[int, int, int, int]:
    """A square around a box, ``margin`` of its longer side wider, kept inside the image.

    Args:
        bbox: ``[x, y, w, h]`` in pixels (COCO).
        width: Image width in pixels.
        height: Image height in pixels.
        margin: Extra share of the longer side.

    Returns:
        ``(left, top, right, bottom)`` pixels for ``PIL.Image.crop``.
    """
    x, y, w, h = bbox
    side = min(max(w, h) * (1 + margin), width, height)
    cx, cy = x + w / 2, y + h / 2
    left = min(max(0.0, cx - side / 2), width - side)
    top = min(max(0.0, cy - side / 2), height - side)
    return round(left), round(top), round(left + side), round(top + side)


def _prepare_one(source: Path, target: Path, bbox: list[float] | None, size: int) -> None:
    with Image.open(source) as image:
        full_w, full_h = image.size
        image.draft("RGB", (size, size) if bbox is None else (
            max(1, int(size * full_w / max(bbox[2], bbox[3], 1))),) * 2)
        scale = image.size[0] / full_w
        # Modes converted as on every path; no EXIF rotation here: the annotation's box is
        # applied to the pixel grid as stored.
        image = to_rgb(image)
        if bbox is not None:
            image = image.crop(square_crop([v * scale for v in bbox], *image.size))
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=95)


def prepare_rpc(raw_root: str | os.PathLike, out_dir: str | os.PathLike, size: int = 224,
                crop: bool = True, workers: int | None = None) -> Path:
    """Writes ``out_dir/prepared-<size>/<class>/<sku>/<file>.jpg`` from an RPC download.

    Resumable: files already written are kept, so an interrupted run continues. Also writes
    ``labels.csv`` (file, sku, super-category, box) beside the class folders.

    Args:
        raw_root: The Kaggle download (holding ``instances_train2019.json`` and ``train2019/``).
        out_dir: ``data/rpc``.
        size: Side of the saved images in pixels.
        crop: Crop to a square around the product's box (10% margin) before resizing; False
            resizes the whole photo.
        workers: Threads (Pillow releases the GIL while decoding); default CPU count.

    Returns:
        The prepared root, a class-per-folder tree.

    Raises:
        FileNotFoundError: If the annotations or images are missing.
    """
    annotations, images = find_rpc_files(raw_root)
    labels = read_coco_labels(annotations)
    root = Path(out_dir) / f"prepared-{size}{'' if crop else '-full'}"
    jobs = []
    for row in labels.itertuples():
        source = images / row.file_name
        target = root / row.label / row.sku / Path(row.file_name).with_suffix(".jpg").name
        if source.is_file() and not target.is_file():
            jobs.append((source, target, row.bbox if crop else None))
    missing = int(sum(not (images / f).is_file() for f in labels["file_name"]))
    print(f"RPC: {len(labels)} labelled images, {labels['sku'].nunique()} SKUs, "
          f"{labels['label'].nunique()} classes; {len(jobs)} to resize to {size} px"
          f"{f', {missing} listed but missing' if missing else ''}")
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: _prepare_one(job[0], job[1], job[2], size), jobs))
    write_text(root / "labels.csv", labels.to_csv(index=False))
    return root
