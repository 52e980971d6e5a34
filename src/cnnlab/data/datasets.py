"""Registry of datasets: download, validate, and the split manifest every notebook reuses.

A manifest is a table with one row per usable image: ``path`` (relative to the dataset root),
``label``, ``split`` (train/val/test), ``group`` (files that must stay in one split, e.g. the
views of one product; ``""`` when unknown), ``width``, ``height``, ``mode``, ``bytes``,
``sha256`` and ``converted`` (an upright RGB copy used instead of the original, relative to the
manifest folder; ``""`` for most files). It is written once by notebook 01 to
``data/<dataset>/manifest.csv`` (with ``dataset.json`` and ``validation.csv`` beside it) and
read by every later notebook, so all models see the same split.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cnnlab.config import ProjectDirs, display_path, project_dirs
from cnnlab.data.images import IMAGE_SUFFIXES, write_converted
from cnnlab.data.synthetic import make_sample_dataset
from cnnlab.data.validate import (
    SPLIT_ALIASES,
    SPLITS,
    ValidationReport,
    class_folders,
    needs_copy,
    safe_extract,
    summarize,
    validate_folder,
)
from cnnlab.files import atomic_path, read_json, write_json

__all__ = ["IMAGE_SUFFIXES", "SPLITS", "SPLIT_ALIASES", "DATASETS", "DatasetSpec", "Manifest",
           "build_manifest", "prepare_dataset", "load_manifest", "fetch_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the registry.

    Attributes:
        name: Registry key.
        title: Display name.
        source: Where the data comes from (dataset page).
        kaggle_handle: ``owner/dataset`` for ``kagglehub.dataset_download``, or None.
        license: Licence as stated at the source.
        hflip: Whether horizontal flips are label-preserving (False for playing cards, whose
            corner indices would mirror).
        synthetic: True for generated data, which every output must say.
        note: Anything a user must know before using it.
        classes: Class folders to keep (names as on disk); None keeps every folder.
        rename: Folder name -> class name (several folders may map to one class).
        split: ``"stratified"`` (random, stratified by class) or ``"group"`` (whole groups per
            split, stratified by class; see :func:`build_manifest`) when the dataset has no
            split folders of its own.
        prepare: Name of a preparation step in :data:`PREPARERS` that turns the download into
            a class-per-folder tree (e.g. decoding COCO annotations), or None.
        class_weights: Whether training should weight classes (imbalanced datasets).
    """

    name: str
    title: str
    source: str
    kaggle_handle: str | None = None
    license: str = "see source"
    hflip: bool = True
    synthetic: bool = False
    note: str = ""
    classes: tuple[str, ...] | None = None
    rename: dict[str, str] = field(default_factory=dict)
    split: str = "stratified"
    prepare: str | None = None
    class_weights: bool = False


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "rpc", "Retail Product Checkout (RPC), 17 super-categories of 200 products",
            "https://www.kaggle.com/datasets/diyer22/retail-product-checkout-dataset "
            "(Wei et al., RPC: A Large-Scale Retail Product Checkout Dataset, arXiv:1901.07249)",
            kaggle_handle="diyer22/retail-product-checkout-dataset", license="CC BY-NC-SA 4.0",
            split="group", prepare="rpc",
            note="train2019 single-product photos (53,739, 1,800 px); labels decoded from "
                 "instances_train2019.json; resized once to data/rpc/prepared-<size>/; split by "
                 "product (SKU) so that views of one product never straddle splits",
        ),
        DatasetSpec(
            "cards", "Cards Image Dataset-Classification (53 classes)",
            "https://www.kaggle.com/datasets/gpiosenka/cards-image-datasetclassification",
            kaggle_handle="gpiosenka/cards-image-datasetclassification", license="CC0",
            hflip=False, note="own train/valid/test split folders, 224x224 JPEG",
        ),
        DatasetSpec(
            "weather", "Weather Image Recognition (11 classes)",
            "https://www.kaggle.com/datasets/jehanbhathena/weather-dataset",
            kaggle_handle="jehanbhathena/weather-dataset", license="CC BY 4.0 (Harvard Dataverse)",
            class_weights=True,
            note="6,862 photos of 11 weather phenomena, imbalanced (rime 1,160, rainbow 232): "
                 "training uses balanced class weights",
        ),
        DatasetSpec(
            "weather-mwd", "Multi-class Weather Dataset (4 classes)",
            "https://data.mendeley.com/datasets/4drtyfjtfy/1 (Ajayi, G. (2018), Multi-class "
            "Weather Dataset for Image Classification, Mendeley Data, V1, "
            "doi:10.17632/4drtyfjtfy.1); on Kaggle as pratik2901/multiclass-weather-dataset",
            kaggle_handle="pratik2901/multiclass-weather-dataset", license="CC BY 4.0",
            note="the weather project's offline stand-in: 1,125 photos as published (cloudy, "
                 "rain, shine, sunrise), no split folders; GIFs and PNGs named .jpg, greyscale "
                 "and RGBA files are converted, exact duplicates excluded (cnnlab validate)",
        ),
        DatasetSpec(
            "vehicles", "Vehicles (Zenodo 6634554: bike, car, juggernaut, minibus, pickup, truck)",
            "https://zenodo.org/records/6634554 (tiny, low-quality vehicle images: bike, car, "
            "juggernaut, minibus, pickup, truck) or any class-per-folder vehicle set",
            license="CC BY 4.0 (Zenodo 6634554)",
            classes=("bike", "car", "minibus", "truck"),
            rename={"bike": "motorcycle", "minibus": "bus"},
            note="no download: pass --data-dir to the class-per-folder tree; the course's four "
                 "classes are selected (bike -> motorcycle, minibus -> bus); --classes all keeps "
                 "every folder",
        ),
        DatasetSpec(
            "sample", "Synthetic shapes (generated, not real photos)",
            "generated by cnnlab.data.synthetic.make_sample_dataset", license="MIT", synthetic=True,
            note="SYNTHETIC: 4 shape classes with per-pixel masks, for offline runs",
        ),
        DatasetSpec(
            "folder", "Any class-per-folder tree", "your own folder (--data-dir)",
            note="with or without train/val/test split folders; files in subfolders of a class "
                 "folder form a group kept in one split with --split group",
        ),
    )
}


def get_dataset_spec(name: str, own_folder: bool = False) -> DatasetSpec:
    """Returns the registry entry ``name``, or ``folder`` for the user's own dataset.

    A name outside the registry is the user's own folder only when the caller has one
    (``own_folder``: a ``data_dir`` was given, or the dataset already has a manifest).
    Otherwise it is a mistake and raises with the registered names, so a mistyped ``crads``
    never silently becomes an empty folder dataset. A folder name close to a registered one
    gets a ``UserWarning`` naming that entry, whose settings (no horizontal flips for cards,
    the class selection of vehicles) do not apply to a folder.

    Args:
        name: Dataset name.
        own_folder: Whether ``name`` refers to the user's own folder of images.

    Raises:
        KeyError: If ``name`` is empty, or unknown without ``own_folder``; the message lists
            the registered names and suggests the closest one.
    """
    import difflib
    import warnings

    if not name:
        raise KeyError("dataset name is empty; choose one of " + ", ".join(DATASETS))
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, list(DATASETS), n=1, cutoff=0.75)
    if not own_folder:
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"unknown dataset {name!r}; {hint}choose one of "
                       f"{', '.join(DATASETS)}, or pass --data-dir (data_dir) to read your own "
                       f"folder of class folders under that name")
    if close:
        warnings.warn(f"dataset {name!r} is not in the registry and is read as your own "
                      f"folder; did you mean {close[0]!r}? Its settings do not apply to a "
                      f"folder", UserWarning, stacklevel=2)
    return DATASETS["folder"]


def fetch_dataset(
    name: str, data_dir: str | os.PathLike | None = None, dirs: ProjectDirs | None = None
) -> Path:
    """Returns a local folder holding dataset ``name``, downloading it if needed.

    Args:
        name: Dataset registry key (or any name with ``data_dir``).
        data_dir: A local copy (folder, or a ``.zip`` extracted safely to
            ``data/<name>/raw``); wins over any download.
        dirs: Project folders (``sample`` is generated under ``data/sample``).

    Returns:
        The dataset root: class folders, or split folders holding class folders.

    Raises:
        FileNotFoundError: If ``data_dir`` does not exist.
        ValueError: If the dataset has no download and no ``data_dir`` was given, or a
            ``.zip`` given as ``data_dir`` has a member outside its folder (``../evil``).
        RuntimeError: If the Kaggle download fails (the message says what to do).
    """
    dirs = dirs or project_dirs()
    spec = get_dataset_spec(name, own_folder=data_dir is not None)
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if root.is_file() and root.suffix.lower() == ".zip":
            target = dirs.data / spec.name / "raw"
            if not target.is_dir():
                print(f"extracting {root.name} to {display_path(target)}")
                safe_extract(root, target)
            root = target
        if not root.is_dir():
            raise FileNotFoundError(
                f"data directory {data_dir} does not exist; pass --data-dir with a folder of "
                f"class subfolders (optionally inside train/valid/test folders) or a .zip of one"
            )
        root = root.resolve()
        return root if spec.prepare else _descend_to_data(root)
    if spec.name == "sample":
        return make_sample_dataset(dirs.data / "sample" / "raw")
    if spec.kaggle_handle:
        root = kaggle_download(spec.kaggle_handle)
        return root if spec.prepare else _descend_to_data(root)
    raise ValueError(
        f"dataset {name!r} has no download; pass --data-dir pointing at a class-per-folder "
        f"tree (source: {spec.source})"
    )


def kaggle_download(handle: str) -> Path:
    """Downloads (or reuses the cached copy of) a Kaggle dataset through ``kagglehub``.

    Public datasets need no credentials; private ones and some networks do. Credentials come
    from ``KAGGLE_USERNAME``/``KAGGLE_KEY``, ``~/.kaggle/kaggle.json`` or Colab secrets.

    Args:
        handle: ``owner/dataset`` as in the Kaggle URL.

    Returns:
        The folder ``kagglehub`` extracted the dataset to (its cache).

    Raises:
        RuntimeError: If the download fails, with the fix.
    """
    import kagglehub

    try:
        path = Path(kagglehub.dataset_download(handle))
    except Exception as error:  # kagglehub raises many types (HTTP, auth, OS)
        has_credentials = bool(os.environ.get("KAGGLE_KEY")) or (
            Path.home() / ".kaggle" / "kaggle.json"
        ).is_file()
        hint = "" if has_credentials else (
            " No Kaggle credentials were found: set KAGGLE_USERNAME and KAGGLE_KEY, or save "
            "kaggle.json from https://www.kaggle.com/settings to ~/.kaggle/kaggle.json."
        )
        raise RuntimeError(
            f"could not download Kaggle dataset {handle}: {error}.{hint} Or download it by hand "
            f"from https://www.kaggle.com/datasets/{handle} and pass --data-dir."
        ) from error
    files = [p for p in path.rglob("*") if p.is_file()]
    version = re.search(r"versions/(\d+)", path.as_posix())
    images = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in files)
    print(f"kagglehub: {handle}, version {version.group(1) if version else 'unknown'}, cached at "
          f"{display_path(path)}: {len(files)} files, {images} images")
    return path


def _descend_to_data(root: Path) -> Path:
    """Skips wrapper folders (a download often nests the data one or two levels down)."""
    for _ in range(3):
        children = [c for c in root.iterdir() if c.is_dir() and not c.name.startswith(".")]
        if any(c.name.lower() in SPLIT_ALIASES for c in children):
            return root
        images = [c for c in root.iterdir() if c.suffix.lower() in IMAGE_SUFFIXES]
        if len(children) == 1 and not images:
            root = children[0]
            continue
        named = [c for c in children if c.name.lower() in SPLIT_ALIASES or
                 any(g.is_dir() and g.name.lower() in SPLIT_ALIASES for g in c.iterdir())]
        if len(named) == 1 and named[0].name.lower() not in SPLIT_ALIASES:
            root = named[0]
            continue
        return root
    return root


@dataclass
class Manifest:
    """The split manifest of one dataset.

    Attributes:
        dataset: Dataset name.
        root: Folder the ``path`` column is relative to.
        frame: One row per usable image (see the module docstring for the columns).
        classes: Class names in label-index order (sorted).
        findings: What validation found (:meth:`ValidationReport.findings` rows), including
            the files left out.
        info: Extra facts saved in ``dataset.json`` (seed, split rule, source, renames).
        folder: Where the manifest is saved (``data/<dataset>/``); converted copies are
            relative to it.
    """

    dataset: str
    root: Path
    frame: pd.DataFrame
    classes: list[str]
    findings: pd.DataFrame = field(default_factory=pd.DataFrame)
    info: dict = field(default_factory=dict)
    folder: Path | None = None

    @property
    def excluded(self) -> pd.DataFrame:
        """Findings about files left out of the manifest."""
        if self.findings.empty:
            return self.findings
        return self.findings[self.findings["action"] == "excluded"].reset_index(drop=True)

    def files(self, rows: pd.DataFrame | None = None) -> list[str]:
        """Absolute paths the pipeline reads: the converted copy where there is one."""
        rows = self.frame if rows is None else rows
        converted = rows["converted"].fillna("") if "converted" in rows else [""] * len(rows)
        return [str((self.folder or self.root) / c) if c else str(self.root / p)
                for p, c in zip(rows["path"], converted, strict=True)]

    def split(self, name: str, max_per_class: int | None = None, seed: int = 0) -> pd.DataFrame:
        """Rows of split ``name`` with absolute ``file`` and integer ``label_index`` columns.

        Args:
            name: ``"train"``, ``"val"`` or ``"test"``.
            max_per_class: Keep at most this many rows per class (a seeded sample).
            seed: Seed of that sample.

        Raises:
            ValueError: If the split is empty.
        """
        rows = self.frame[self.frame["split"] == name].copy()
        if rows.empty:
            raise ValueError(f"split {name!r} of {self.dataset} is empty; rebuild the manifest")
        if max_per_class:
            rows = rows.sample(frac=1, random_state=seed).groupby("label").head(max_per_class)
        rows = rows.sort_values("path").reset_index(drop=True)
        rows["file"] = self.files(rows)
        rows["label_index"] = rows["label"].map({c: i for i, c in enumerate(self.classes)})
        return rows

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) per split (columns)."""
        table = pd.crosstab(self.frame["label"], self.frame["split"])
        return table.reindex(columns=[s for s in SPLITS if s in table.columns], fill_value=0)

    def class_weights(self, split: str = "train") -> dict[int, float]:
        """Balanced class weights of ``split`` for ``fit`` (see :func:`balanced_class_weights`).

        Returns:
            ``{label_index: weight}`` over every class.
        """
        labels = self.frame.loc[self.frame["split"] == split, "label"]
        index = {c: i for i, c in enumerate(self.classes)}
        return balanced_class_weights(labels.map(index).to_numpy(), len(self.classes))

    def validation_summary(self) -> pd.DataFrame:
        """Findings of validation counted per problem (``problem, action, count, fix``)."""
        noted = set(self.findings["path"]) if not self.findings.empty else set()
        return summarize(self.findings, int((~self.frame["path"].isin(noted)).sum()))

    def resplit(self, rule: str, seed: int | None = None, val_fraction: float = 0.15,
                test_fraction: float = 0.15) -> Manifest:
        """The same images split by another rule (``"stratified"`` or ``"group"``).

        Used to compare a naive random split with a group split (leakage); the manifest's
        own files are not touched.

        Raises:
            ValueError: If the rule is unknown or the dataset came with its own split folders.
        """
        if rule not in SPLIT_RULES:
            raise ValueError(f"split rule {rule!r} is unknown; use one of {SPLIT_RULES}")
        if "own split folders" in self.info.get("split_rule", ""):
            raise ValueError(f"{self.dataset} has its own split folders; nothing to re-split")
        seed = self.info.get("seed", 42) if seed is None else seed
        frame = self.frame.copy()
        frame["split"] = (_group_split(frame, seed, val_fraction, test_fraction)
                          if rule == "group" else
                          _stratified_split(frame["label"], seed, val_fraction, test_fraction))
        info = {**self.info, "split_rule": f"{rule} (re-split, seed {seed})"}
        return Manifest(self.dataset, self.root, frame, self.classes, self.findings, info,
                        self.folder)

    def group_leakage(self) -> pd.DataFrame:
        """How many val/test images share a group (e.g. a product) with a train image.

        Returns:
            One row per split: ``images``, ``groups``, ``images whose group is in train`` and
            that share in percent. Empty when the manifest has no groups.
        """
        if "group" not in self.frame or not self.frame["group"].fillna("").astype(bool).any():
            return pd.DataFrame(columns=["split", "images", "groups",
                                         "images whose group is in train", "share %"])
        train_groups = set(self.frame.loc[self.frame["split"] == "train", "group"])
        rows = []
        for split in [s for s in SPLITS if s in set(self.frame["split"])]:
            part = self.frame[self.frame["split"] == split]
            shared = int(part["group"].isin(train_groups).sum()) if split != "train" else len(part)
            rows.append({"split": split, "images": len(part), "groups": part["group"].nunique(),
                         "images whose group is in train": shared,
                         "share %": round(100 * shared / max(len(part), 1), 1)})
        return pd.DataFrame(rows)

    def save(self, folder: str | os.PathLike) -> Path:
        """Writes ``manifest.csv``, ``dataset.json`` and ``validation.csv`` (atomically)."""
        folder = Path(folder)
        with atomic_path(folder / "manifest.csv") as tmp:
            self.frame.to_csv(tmp, index=False)
        with atomic_path(folder / "validation.csv") as tmp:
            self.findings.to_csv(tmp, index=False)
        write_json(folder / "dataset.json", {
            "dataset": self.dataset, "root": str(self.root), "classes": self.classes,
            "excluded": len(self.excluded), **self.info,
        })
        self.folder = folder
        return folder / "manifest.csv"

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Manifest:
        """Reads a manifest written by :meth:`save`.

        Raises:
            FileNotFoundError: If ``folder`` holds no manifest (run notebook 01 first).
        """
        folder = Path(folder)
        if not (folder / "manifest.csv").is_file():
            raise FileNotFoundError(
                f"{display_path(folder / 'manifest.csv')} does not exist; run notebook "
                f"01_download_eda (or `cnnlab run`) for this dataset first")
        meta = read_json(folder / "dataset.json")
        frame = pd.read_csv(folder / "manifest.csv", keep_default_na=False,
                            dtype={"group": str, "converted": str, "label": str})
        findings_file = folder / "validation.csv"
        findings = pd.read_csv(findings_file, keep_default_na=False) \
            if findings_file.is_file() and findings_file.stat().st_size > 1 else pd.DataFrame()
        info = {k: v for k, v in meta.items()
                if k not in ("dataset", "root", "classes", "excluded")}
        return cls(meta["dataset"], Path(meta["root"]), frame, list(meta["classes"]),
                   findings, info, folder)


SPLIT_RULES = ("stratified", "group")


def balanced_class_weights(labels: np.ndarray, num_classes: int | None = None) -> dict[int, float]:
    """Balanced class weights, ``n_samples / (n_classes * count)``, for ``keras.Model.fit``.

    The "balanced" heuristic of King & Zeng (2001) as implemented by scikit-learn's
    ``compute_class_weight``.

    Args:
        labels: ``(n,)`` integer class indices.
        num_classes: Classes in the model; classes absent from ``labels`` get weight 1.0.

    Returns:
        ``{label_index: weight}`` for ``0 .. num_classes - 1``.
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels, dtype=int)
    present = np.unique(labels)
    weights = dict(zip(present.tolist(), compute_class_weight(
        "balanced", classes=present, y=labels).tolist(), strict=True))
    count = num_classes if num_classes is not None else int(present.max()) + 1
    return {i: float(weights.get(i, 1.0)) for i in range(count)}


def build_manifest(
    root: str | os.PathLike,
    dataset: str = "folder",
    seed: int = 42,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    classes: list[str] | tuple[str, ...] | None = None,
    rename: dict[str, str] | None = None,
    split: str | None = None,
    converted_dir: str | os.PathLike | None = None,
    report: ValidationReport | None = None,
) -> Manifest:
    """Validates a dataset folder and assigns every usable image to train, val or test.

    A dataset's own split folders (``train``, ``valid``/``val``, ``test``) are kept as they
    are. Otherwise, with ``split="stratified"`` the split is random and stratified by class
    (scikit-learn ``train_test_split``), so every class keeps its share in each split; with
    ``split="group"`` whole groups go to one split (``StratifiedGroupKFold``: one fold of
    ``round(1 / test_fraction)`` for test, then one of the rest for val), so that near-duplicate
    views of one object never straddle train and test. A file's group is the subfolder of its
    class folder it sits in (``<class>/<group>/<file>``). Both are reproducible from ``seed``.

    Args:
        root: Dataset root (class folders, or split folders of class folders).
        dataset: Registry name; supplies the default ``classes``, ``rename`` and ``split``.
        seed: Seed of the split.
        val_fraction: Share of images for validation when the dataset has no split folders.
        test_fraction: Share for test, likewise.
        classes: Class folders to keep (before renaming); None: the registry's choice, or all.
            ``["all"]`` keeps every folder.
        rename: Folder name -> class name; None: the registry's map.
        split: ``"stratified"`` or ``"group"``; None: the registry's choice.
        converted_dir: Where to write upright RGB copies of EXIF-rotated photos and of formats
            TensorFlow cannot decode; None leaves those files out instead.
        report: A validation report of ``root`` already computed (else validation runs).

    Returns:
        The manifest; validation findings are in ``manifest.findings``.

    Raises:
        FileNotFoundError: If ``root`` is missing.
        ValueError: If no usable image is found, ``split`` is unknown, or a class has too few
            images (or groups) to split.
    """
    spec = get_dataset_spec(dataset, own_folder=True)  # ``root`` holds its images
    classes = spec.classes if classes is None else classes
    classes = None if classes is not None and list(classes) == ["all"] else classes
    rename = spec.rename if rename is None else rename
    split = split or spec.split
    if split not in SPLIT_RULES:
        raise ValueError(f"split rule {split!r} is unknown; use one of {SPLIT_RULES}")
    report = report or validate_folder(root, classes)
    root = report.root
    rows = report.usable().copy()
    if converted_dir is None:
        rows = rows[~rows["problem"].map(needs_copy)]
        rows["converted"] = ""
    else:
        rows["converted"] = [_convert(root, Path(converted_dir), path, sha256)
                             if needs_copy(problem) else ""
                             for path, problem, sha256 in zip(rows["path"], rows["problem"],
                                                              rows["sha256"], strict=True)]
    if rows.empty:
        raise ValueError(f"no usable images ({', '.join(IMAGE_SUFFIXES)}) in class folders "
                         f"below {display_path(root)}:\n{report}")
    rows["label"] = rows["label"].map(lambda name: rename.get(name, name))
    parts = rows["path"].str.split("/")
    depth = 3 if rows["split"].notna().any() else 2
    rows["group"] = [p[depth - 1] if len(p) > depth else "" for p in parts]
    own_splits = rows["split"].notna().any()
    if own_splits:
        rule = "the dataset's own split folders"
    elif split == "group":
        rows["split"] = _group_split(rows, seed, val_fraction, test_fraction)
        rule = (f"group split: every image of a group (subfolder of a class folder) in one "
                f"split, stratified by class (StratifiedGroupKFold), seed {seed}, "
                f"val ~{val_fraction:.0%}, test ~{test_fraction:.0%}")
    else:
        rows["split"] = _stratified_split(rows["label"], seed, val_fraction, test_fraction)
        rule = (f"stratified random split by class, seed {seed}, "
                f"val {val_fraction:.0%}, test {test_fraction:.0%}")
    rows["format"] = rows["format"].where(rows["converted"] == "", "PNG")
    columns = ["path", "label", "split", "group", "width", "height", "mode", "format", "bytes",
               "sha256", "converted"]
    frame = rows[columns].sort_values(["split", "label", "path"]).reset_index(drop=True)
    info = {"seed": seed, "split_rule": rule, "source": spec.source,
            "synthetic": spec.synthetic, "rename": dict(rename),
            "selected_classes": list(classes) if classes else "all",
            "class_weights": spec.class_weights}
    return Manifest(dataset, root, frame, sorted(frame["label"].unique()), report.findings(),
                    info)


def _convert(root: Path, converted_dir: Path, path: str, sha256: str) -> str:
    """The converted copy of ``path``, named by its source's content: a changed source (same
    name, other bytes) gets a new copy instead of the old one."""
    target = converted_dir / f"{path}.{str(sha256)[:12]}.png"
    if not target.is_file():
        write_converted(root / path, target)
    parent = converted_dir.parent
    return target.relative_to(parent).as_posix()


def _stratified_split(labels: pd.Series, seed: int, val_fraction: float, test_fraction: float):
    from sklearn.model_selection import train_test_split

    counts = labels.value_counts()
    needed = math.ceil(1 / min(val_fraction, test_fraction)) + 1
    if counts.min() < needed:
        raise ValueError(f"class {counts.idxmin()!r} has {counts.min()} image(s); a split with "
                         f"val {val_fraction:.0%} and test {test_fraction:.0%} needs at least "
                         f"{needed} per class (add images or use split folders)")
    index = labels.index.to_numpy()
    holdout = val_fraction + test_fraction
    train, rest = train_test_split(index, test_size=holdout, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=test_fraction / holdout,
                                 stratify=labels[rest], random_state=seed)
    split = pd.Series("train", index=labels.index)
    split[val], split[test] = "val", "test"
    return split


def _group_split(rows: pd.DataFrame, seed: int, val_fraction: float, test_fraction: float):
    from sklearn.model_selection import StratifiedGroupKFold

    groups = rows["group"].where(rows["group"] != "", rows["path"])
    per_class = groups.groupby(rows["label"]).nunique()
    if per_class.min() < 3:
        raise ValueError(f"class {per_class.idxmin()!r} has {per_class.min()} group(s); a group "
                         f"split needs at least 3 per class (train, val, test); use "
                         f"--split stratified")
    split = pd.Series("train", index=rows.index)
    remaining = rows.index.to_numpy()
    for name, fraction in (("test", test_fraction), ("val", val_fraction / (1 - test_fraction))):
        folds = max(2, round(1 / fraction))
        folds = min(folds, int(groups[remaining].groupby(rows["label"][remaining]).nunique().min()))
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        _, held = next(splitter.split(remaining, rows["label"][remaining], groups[remaining]))
        split[remaining[held]] = name
        remaining = np.setdiff1d(remaining, remaining[held])
    return split


def _prepare_rpc(raw_root: Path, out_dir: Path, size: int) -> Path:
    from cnnlab.data.rpc import prepare_rpc

    return prepare_rpc(raw_root, out_dir, size)


# Steps that turn a download into a class-per-folder tree: (raw root, data/<name>, size) -> root.
PREPARERS = {"rpc": _prepare_rpc}


def prepare_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    dirs: ProjectDirs | None = None,
    seed: int = 42,
    classes: list[str] | None = None,
    rename: dict[str, str] | None = None,
    split: str | None = None,
    size: int = 224,
) -> Manifest:
    """Fetches dataset ``name``, validates it, builds its manifest and saves it.

    Writes ``data/<name>/manifest.csv``, ``dataset.json``, ``validation.csv`` and, where
    needed, upright RGB copies under ``data/<name>/converted/``. Datasets with a preparation
    step (RPC) are first turned into a class-per-folder tree under ``data/<name>/``.

    Args:
        name: Registry key (``folder`` or any other name needs ``data_dir``).
        data_dir: Local folder or ``.zip``; wins over the download.
        dirs: Project folders.
        seed: Split seed.
        classes: Class folders to keep (see :func:`build_manifest`).
        rename: Folder -> class renames.
        split: ``"stratified"`` or ``"group"``.
        size: Image side of the one-off resize of datasets with a preparation step.

    Returns:
        The saved manifest.
    """
    dirs = dirs or project_dirs()
    spec = get_dataset_spec(name, own_folder=data_dir is not None)
    root = fetch_dataset(name, data_dir, dirs)
    out = dirs.data / name
    if spec.prepare:
        root = PREPARERS[spec.prepare](root, out, size)
    manifest = build_manifest(root, dataset=name, seed=seed, classes=classes, rename=rename,
                              split=split, converted_dir=out / "converted")
    manifest.save(out)
    return manifest


def load_manifest(name: str, dirs: ProjectDirs | None = None) -> Manifest:
    """Reads ``data/<name>/manifest.csv`` written by notebook 01."""
    return Manifest.load((dirs or project_dirs()).data / name)


def image_stats(manifest: Manifest) -> pd.DataFrame:
    """Image size and colour-mode statistics per split.

    Returns:
        One row per split: images, distinct sizes, the most common size, min/median/max
        width and height in pixels, colour modes with counts, median file size in KiB.
    """
    rows = []
    for split, group in manifest.frame.groupby("split", sort=False):
        sizes = group["width"].astype(str) + "x" + group["height"].astype(str)
        rows.append({
            "split": split, "images": len(group), "distinct sizes": sizes.nunique(),
            "most common size": sizes.mode().iat[0],
            "width min/median/max": f"{group.width.min()}/{int(group.width.median())}/"
                                    f"{group.width.max()}",
            "height min/median/max": f"{group.height.min()}/{int(group.height.median())}/"
                                     f"{group.height.max()}",
            "modes": ", ".join(f"{m}: {n}" for m, n in group["mode"].value_counts().items()),
            "median KiB": round(group["bytes"].median() / 1024, 1),
        })
    order = {s: i for i, s in enumerate(SPLITS)}
    return pd.DataFrame(rows).sort_values("split", key=lambda s: s.map(order)).reset_index(
        drop=True)


def pick_images(root: str | os.PathLike, count: int, seed: int = 0) -> pd.DataFrame:
    """Picks ``count`` images spread over the classes of a dataset folder (for segmentation).

    Args:
        root: Dataset root (class folders, or split folders of class folders).
        count: Images to pick, round-robin over classes.
        seed: Sampling seed.

    Returns:
        Rows ``label, file`` (absolute paths), at most ``count``.
    """
    by_class: dict[str, list[Path]] = {}
    for _, folder in class_folders(Path(root)):
        by_class.setdefault(folder.name, []).extend(
            p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES)
    rng = np.random.default_rng(seed)
    pools = {k: list(rng.permutation(v)) for k, v in sorted(by_class.items()) if v}
    rows = []
    while len(rows) < count and any(pools.values()):
        for label, pool in pools.items():
            if pool and len(rows) < count:
                rows.append({"label": label, "file": str(pool.pop())})
    return pd.DataFrame(rows)
