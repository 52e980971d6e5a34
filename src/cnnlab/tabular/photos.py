"""Photos of a tabular dataset, decoded once and cached, and their backbone features.

Each house has one photo per room (:data:`cnnlab.tabular.columns.ROOMS`). They are decoded
with the same function as every deployed model's input (:func:`cnnlab.data.load_image`: EXIF
orientation, any mode to 8-bit RGB, the training pipeline's resize) into one uint8 array per
room, cached in ``data/<dataset>/photos/`` under a key of the file list and size, so a rerun
(or a second model) decodes nothing. Frozen-backbone features are cached the same way.
"""

from __future__ import annotations

import numpy as np

from cnnlab.config import ProjectDirs, display_path, project_dirs
from cnnlab.data.images import load_image
from cnnlab.data.pipeline import cache_key
from cnnlab.files import atomic_path
from cnnlab.tabular.columns import TabularData

__all__ = ["load_photos", "encode_photos"]


def _cache_file(data: TabularData, kind: str, size: int, dirs: ProjectDirs):
    files = [str(data.root / p) for room in data.spec.rooms for p in data.frame[room]]
    return dirs.data / data.spec.name / "photos" / f"{kind}-{size}-{cache_key(files, size)}.npz"


def load_photos(data: TabularData, image_size: int, dirs: ProjectDirs | None = None,
                verbose: bool = True) -> dict[str, np.ndarray]:
    """Every row's photos at ``image_size``, decoded once per size and cached.

    Args:
        data: Rows with one photo column per room (paths relative to ``data.root``).
        image_size: Side in pixels of the square photos.
        dirs: Project folders (the cache lives under ``data/<dataset>/photos/``).
        verbose: Print whether the cache was used.

    Returns:
        ``{room: (rows, image_size, image_size, 3) uint8}``, rows in ``data.frame``'s order.

    Raises:
        ValueError: If the dataset has no photos, or a photo is unreadable (the message
            names the file).
    """
    if not data.spec.rooms or data.root is None:
        raise ValueError(f"dataset {data.spec.name} has no photos")
    dirs = dirs or project_dirs()
    path = _cache_file(data, "photos", image_size, dirs)
    if path.is_file():
        with np.load(path) as cached:
            photos = {room: cached[room] for room in data.spec.rooms}
        if verbose:
            print(f"photos: {len(data.frame)} x {len(photos)} rooms at {image_size} px from the "
                  f"cache {display_path(path.parent)}/")
        return photos
    photos = {room: np.stack([load_image(data.root / p, image_size).astype(np.uint8)
                              for p in data.frame[room]]) for room in data.spec.rooms}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **photos)
    if verbose:
        print(f"photos: decoded {len(data.frame)} x {len(photos)} rooms at {image_size} px, "
              f"cached as {display_path(path.parent)}/")
    return photos


def encode_photos(data: TabularData, photos: dict[str, np.ndarray], encoder, tag: str,
                  dirs: ProjectDirs | None = None, batch_size: int = 64,
                  verbose: bool = True) -> dict[str, np.ndarray]:
    """Features of every photo from a frozen image encoder, computed once and cached.

    Args:
        data: The rows ``photos`` belong to.
        photos: ``{room: (rows, s, s, 3) uint8}`` from :func:`load_photos`.
        encoder: A ``keras.Model`` mapping ``(batch, s, s, 3)`` float32 in ``[0, 255]`` to
            ``(batch, d)`` features (see :func:`cnnlab.tabular.models.image_encoder`).
        tag: Names the encoder in the cache key (backbone and weights).
        dirs: Project folders.
        batch_size: Photos per forward pass.
        verbose: Print whether the cache was used.

    Returns:
        ``{room: (rows, d) float32}``.
    """
    dirs = dirs or project_dirs()
    size = int(next(iter(photos.values())).shape[1])
    path = _cache_file(data, f"features-{tag}", size, dirs)
    if path.is_file():
        with np.load(path) as cached:
            features = {room: cached[room] for room in photos}
        if verbose:
            print(f"features: {tag} from the cache {display_path(path.parent)}/")
        return features
    features = {room: encoder.predict(images.astype(np.float32), batch_size=batch_size,
                                      verbose=0).astype(np.float32)
                for room, images in photos.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **features)
    if verbose:
        dim = next(iter(features.values())).shape[1]
        print(f"features: {tag}, {len(data.frame)} x {len(features)} photos -> {dim} values "
              f"each, cached as {display_path(path.parent)}/")
    return features
