"""The tabular datasets: their columns, loaders and the split manifest every model reuses.

Three datasets, in a registry keyed by name (:data:`TABULAR_DATASETS`):

- ``houses``: the Houses dataset of Ahmed & Moustafa, "House price estimation from visual and
  textual features", IJCCI 2016 (arXiv:1609.08399, DOI 10.5220/0006040700620068; GitHub
  ``emanhamed/Houses-dataset``): 535 houses in California, four photos each (bathroom,
  bedroom, frontal, kitchen) and ``HousesInfo.txt`` (bedrooms, bathrooms, area in sq ft,
  zipcode, price in USD).
- ``airbnb``: the Airbnb course project's 1,000 Madrid listings (see
  :mod:`cnnlab.tabular.airbnb`), tabular only.
- ``sample_houses``: synthetic houses in the Houses layout
  (:func:`cnnlab.data.synthetic.make_sample_houses`), generated in seconds, so notebook 07
  runs with no network.

A split manifest (``data/<dataset>/manifest.csv``: one row per house or listing with its
``split``) is written once and reread, so every model and baseline sees the same rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from cnnlab.config import ProjectDirs, display_path, project_dirs
from cnnlab.files import atomic_path

__all__ = ["ROOMS", "TabularSpec", "TABULAR_DATASETS", "get_tabular_spec", "read_houses",
           "fetch_houses", "course_csv_dir", "split_rows", "load_split", "TabularData"]

ROOMS = ("bathroom", "bedroom", "frontal", "kitchen")
HOUSES_URL = "https://github.com/emanhamed/Houses-dataset/archive/refs/heads/master.zip"
# SHA-256 of the upstream HousesInfo.txt (535 lines). A branch archive has no stable hash of
# its own (GitHub rebuilds it), so the download is checked by its content instead.
HOUSES_INFO_SHA256 = "47d22d22d96b490d19a3bc686edd3524af97e2c7041cfbd57c0f463ba80bb664"
HOUSES_INFO = "HousesInfo.txt"
HOUSES_FOLDER = "Houses Dataset"
# Local copies used when no data_dir is passed (e.g. set by `make run` from ../shared).
HOUSES_DIR_ENV = "CNNLAB_HOUSES_DIR"
AIRBNB_DIR_ENV = "CNNLAB_AIRBNB_DIR"


@dataclass(frozen=True)
class TabularSpec:
    """One tabular dataset of the registry.

    Attributes:
        name: Registry key.
        title: Display name.
        source: Where the data comes from (paper, dataset page).
        target: Column to predict (a price, USD).
        numeric: Numeric feature columns, imputed and standardised.
        log_numeric: Skewed positive columns, log1p-transformed before scaling.
        categorical: Columns one-hot encoded (rare levels pooled).
        target_copies: ``{column: reason}``: columns known only together with the target,
            dropped before any model sees them.
        rooms: Photo columns (one photo per room per row); empty for tabular-only data.
        note: What a user must know.
    """

    name: str
    title: str
    source: str
    target: str
    numeric: tuple[str, ...]
    log_numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    target_copies: dict = field(default_factory=dict)
    rooms: tuple[str, ...] = ()
    note: str = ""

    @property
    def features(self) -> tuple[str, ...]:
        return (*self.numeric, *self.log_numeric, *self.categorical)


def _airbnb_spec() -> TabularSpec:
    from cnnlab.tabular.airbnb import COLUMNS, TARGET

    copies = {
        "weekly_price": "the weekly rate the host sets together with the nightly price "
                        "(about 5-7x the target); unknown for a listing whose price we predict",
        "monthly_price": "the monthly rate the host sets together with the nightly price "
                         "(about 20-30x the target); unknown for a listing whose price we predict",
    }
    numeric = tuple(c for c in COLUMNS if c != TARGET and c not in copies)
    return TabularSpec(
        name="airbnb", title="Airbnb Madrid listings (course project)",
        source="Inside Airbnb (http://insideairbnb.com/get-the-data/, CC BY 4.0) through "
               "OpenDataSoft's airbnb-listings export, 2017",
        target=TARGET, numeric=numeric, target_copies=copies,
        note="1,000 listings with the course's own train/test split (750/250); photos only "
             "when downloaded from Inside Airbnb")


_HOUSES = TabularSpec(
    name="houses", title="Houses dataset (Ahmed & Moustafa 2016)",
    source="Ahmed & Moustafa, House price estimation from visual and textual features, "
           "IJCCI 2016, arXiv:1609.08399; github.com/emanhamed/Houses-dataset",
    target="price", numeric=("bedrooms", "bathrooms"), log_numeric=("area",),
    categorical=("zipcode",), rooms=ROOMS,
    note="535 houses, 4 photos each; no licence upstream, cite the paper")

TABULAR_DATASETS: dict[str, TabularSpec] = {
    "houses": _HOUSES,
    # The same columns and rooms, generated (the Houses layout): only what it is differs.
    "sample_houses": dataclasses.replace(
        _HOUSES, name="sample_houses", title="Synthetic houses (generated, not real data)",
        source="generated by cnnlab.data.synthetic.make_sample_houses in the layout of the "
               "Houses dataset: the offline stand-in for a machine with no network",
        note="SYNTHETIC: 240 generated houses, 4 shape photos each; the frontal photo's "
             "shape sets part of the price"),
}


def get_tabular_spec(name: str) -> TabularSpec:
    """Returns the registry entry ``name``.

    Raises:
        KeyError: If ``name`` is unknown; the message lists the known names.
    """
    if name == "airbnb" and name not in TABULAR_DATASETS:
        TABULAR_DATASETS["airbnb"] = _airbnb_spec()
    if name not in TABULAR_DATASETS:
        known = sorted({*TABULAR_DATASETS, "airbnb"})
        raise KeyError(f"unknown tabular dataset {name!r}; choose one of {known}")
    return TABULAR_DATASETS[name]


# --------------------------------------------------------------------------- houses


def houses_folder(root: str | os.PathLike) -> Path:
    """The folder holding ``HousesInfo.txt``: ``root`` itself or ``root/Houses Dataset``.

    Raises:
        FileNotFoundError: If neither holds ``HousesInfo.txt``; the message says what to pass.
    """
    root = Path(root)
    for folder in (root, root / HOUSES_FOLDER, *sorted(root.glob(f"*/{HOUSES_FOLDER}"))):
        if (folder / HOUSES_INFO).is_file():
            return folder
    raise FileNotFoundError(
        f"no {HOUSES_INFO} in {root} or {root / HOUSES_FOLDER}; pass the folder of the Houses "
        f"dataset (github.com/emanhamed/Houses-dataset) as --data-dir, or leave it out to "
        f"download it")


def read_houses(root: str | os.PathLike, strict: bool = False
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reads ``HousesInfo.txt`` and checks every house's four photos.

    Line ``i`` (1-based) of ``HousesInfo.txt`` describes house ``i``, whose photos are
    ``{i}_{room}.jpg`` for the rooms of :data:`ROOMS`. Lines that do not hold five numbers
    (bedrooms, bathrooms, area, zipcode, price > 0) and houses with a missing photo are left
    out, each with a message naming the file; with ``strict`` the first one raises instead.

    Args:
        root: The dataset folder (see :func:`houses_folder`).
        strict: Raise on the first bad line or missing photo.

    Returns:
        ``(houses, left_out)``: ``houses`` has one row per usable house: ``house`` (int id),
        ``bedrooms``, ``bathrooms``, ``area`` (sq ft), ``zipcode`` (str), ``price`` (USD,
        float64), and one column per room with the photo path relative to the folder;
        ``left_out`` has ``house``, ``file`` and ``reason`` per house left out.

    Raises:
        FileNotFoundError: If the folder has no ``HousesInfo.txt``, or (strict) a photo is
            missing; the message names the file.
        ValueError: (strict) On a malformed line; the message names the file and line.
    """
    folder = houses_folder(root)
    info = folder / HOUSES_INFO
    rows, left_out = [], []

    def reject(house: int, file: Path, reason: str, error: type[Exception]) -> None:
        message = f"{display_path(file)}: {reason}"
        if strict:
            raise error(message)
        left_out.append({"house": house, "file": display_path(file), "reason": reason})

    for number, line in enumerate(info.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 5:
                raise ValueError(f"{len(fields)} fields")
            bedrooms, bathrooms, area, zipcode, price = fields
            row = {"house": number, "bedrooms": float(bedrooms), "bathrooms": float(bathrooms),
                   "area": float(area), "zipcode": str(int(float(zipcode))),
                   "price": float(price)}
            if not (row["price"] > 0 and row["area"] > 0):
                raise ValueError("price and area must be positive")
        except ValueError as error:
            reject(number, info, f"line {number} {line.strip()!r} is not 'bedrooms bathrooms "
                   f"area zipcode price' ({error}); fix or delete the line", ValueError)
            continue
        missing = [room for room in ROOMS if not (folder / f"{number}_{room}.jpg").is_file()]
        if missing:
            reject(number, folder / f"{number}_{missing[0]}.jpg",
                   f"photo missing for house {number} ({', '.join(missing)}); restore it from "
                   f"the dataset archive or delete line {number} of {HOUSES_INFO}",
                   FileNotFoundError)
            continue
        rows.append({**row, **{room: f"{number}_{room}.jpg" for room in ROOMS}})
    houses = pd.DataFrame(rows)
    if houses.empty:
        raise ValueError(f"{display_path(info)} has no usable house")
    return houses, pd.DataFrame(left_out, columns=["house", "file", "reason"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_houses(data_dir: str | os.PathLike | None = None,
                 dirs: ProjectDirs | None = None) -> Path:
    """The Houses dataset folder: ``data_dir`` (or ``$CNNLAB_HOUSES_DIR``), else downloaded
    once to data/.

    The download is the upstream repository's archive (``HOUSES_URL``) through
    ``keras.utils.get_file``, extracted under ``data/houses/raw/`` and checked by the SHA-256
    of its ``HousesInfo.txt``; a rerun finds it there and downloads nothing.

    Args:
        data_dir: A local copy (the folder holding ``HousesInfo.txt`` and the photos).
        dirs: Project folders.

    Returns:
        The folder holding ``HousesInfo.txt``.

    Raises:
        FileNotFoundError: If ``data_dir`` holds no ``HousesInfo.txt``.
        RuntimeError: If the download fails or its content does not match; the message says
            how to pass a local copy.
    """
    data_dir = data_dir or os.environ.get(HOUSES_DIR_ENV) or None
    if data_dir is not None:
        return houses_folder(data_dir)
    raw = (dirs or project_dirs()).data / "houses" / "raw"
    try:
        return houses_folder(raw)
    except FileNotFoundError:
        pass
    import keras

    raw.mkdir(parents=True, exist_ok=True)
    try:
        keras.utils.get_file("Houses-dataset-master.zip", origin=HOUSES_URL, extract=True,
                             cache_dir=str(raw), cache_subdir="")
    except Exception as error:  # network errors come in many types
        raise RuntimeError(
            f"could not download the Houses dataset from {HOUSES_URL} ({error}); download "
            f"and unzip it yourself and pass its folder as --data-dir") from error
    folder = houses_folder(raw)
    digest = _sha256(folder / HOUSES_INFO)
    if digest != HOUSES_INFO_SHA256:
        raise RuntimeError(
            f"{display_path(folder / HOUSES_INFO)} from {HOUSES_URL} has SHA-256 {digest}, not "
            f"the known {HOUSES_INFO_SHA256}: the upstream data changed; check it and pass its "
            f"folder as --data-dir")
    return folder


def fetch_sample_houses(data_dir: str | os.PathLike | None = None,
                        dirs: ProjectDirs | None = None) -> Path:
    """The synthetic houses: ``data_dir`` if given, else generated once in
    ``data/sample_houses/raw/`` (:func:`cnnlab.data.synthetic.make_sample_houses`).

    Raises:
        FileNotFoundError: If ``data_dir`` holds no ``HousesInfo.txt``.
    """
    if data_dir is not None:
        return houses_folder(data_dir)
    from cnnlab.data.synthetic import make_sample_houses

    return make_sample_houses((dirs or project_dirs()).data / "sample_houses" / "raw")


# How each dataset in the Houses layout is found or fetched.
HOUSES_LAYOUT = {"houses": fetch_houses, "sample_houses": fetch_sample_houses}


# --------------------------------------------------------------------------- split


SPLITS = ("train", "val", "test")


def split_rows(frame: pd.DataFrame, target: str, seed: int = 42, val_fraction: float = 0.15,
               test_fraction: float = 0.25, bins: int = 5) -> pd.Series:
    """Assigns each row to train/val/test, stratified by quantile bins of the log target.

    Stratifying a regression target by its quantiles keeps cheap and expensive rows in every
    split, so a 134-row test split does not miss the price tail by chance.

    Args:
        frame: One row per example.
        target: The target column (positive).
        seed: Seed of the split.
        val_fraction: Share of all rows for validation.
        test_fraction: Share of all rows for test.
        bins: Quantile bins to stratify by.

    Returns:
        ``split`` per row (index of ``frame``).
    """
    strata = pd.qcut(np.log(frame[target]), bins, labels=False, duplicates="drop")
    rest, test = train_test_split(frame.index, test_size=test_fraction, random_state=seed,
                                  stratify=strata)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction),
                                  random_state=seed, stratify=strata.loc[rest])
    split = pd.Series("train", index=frame.index, name="split")
    split.loc[val] = "val"
    split.loc[test] = "test"
    return split


@dataclass
class TabularData:
    """Rows of a tabular dataset with their split, as every model of notebook 07 reads them.

    Attributes:
        spec: The dataset's registry entry.
        frame: One row per example: ``id``, the spec's columns, photo paths (if any), ``split``.
        root: Folder the photo paths are relative to (None without photos).
        left_out: Rows left out while reading, with the reason.
    """

    spec: TabularSpec
    frame: pd.DataFrame
    root: Path | None = None
    left_out: pd.DataFrame = field(default_factory=pd.DataFrame)

    def rows(self, split: str) -> pd.DataFrame:
        """The rows of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        return self.frame[self.frame["split"] == split]

    def target(self, split: str) -> np.ndarray:
        """``(n,)`` float64 target of one split (USD)."""
        return self.rows(split)[self.spec.target].to_numpy(np.float64)

    def counts(self) -> pd.Series:
        return self.frame["split"].value_counts().reindex(SPLITS)


def course_csv_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder of the Airbnb course CSVs: ``data_dir``, else ``$CNNLAB_AIRBNB_DIR``, else None.

    Raises:
        FileNotFoundError: If the folder given has no ``trainAttrX.csv``.
    """
    folder = data_dir or os.environ.get(AIRBNB_DIR_ENV) or None
    if folder is None:
        return None
    folder = Path(folder)
    if not (folder / "trainAttrX.csv").is_file():
        raise FileNotFoundError(f"{folder} holds no trainAttrX.csv: pass the folder of the "
                                f"Airbnb course CSVs (trainAttrX.csv, testAttrX.csv, ...)")
    return folder


def _read_airbnb(data_dir: str | os.PathLike | None, listings_url: str | None,
                 dirs: ProjectDirs, verbose: bool) -> tuple[pd.DataFrame, Path | None,
                                                        pd.DataFrame]:
    """Course CSVs from ``data_dir``, or an Inside Airbnb listings file with its photos."""
    from cnnlab.tabular import airbnb

    if listings_url is not None:
        raw = dirs.data / "airbnb" / "raw"
        frame, left_out = airbnb.read_listings(airbnb.fetch_listings(listings_url, raw))
        photos_dir = dirs.data / "airbnb" / "photos"
        report = airbnb.fetch_photos(frame, photos_dir, progress=verbose)
        if verbose:
            print(airbnb.photo_summary(report))
        usable = report.set_index("id")["path"]
        missing = frame["id"].map(usable).fillna("") == ""
        left_out = pd.concat([left_out, pd.DataFrame(
            {"id": frame.loc[missing, "id"], "reason": "no usable photo (see fetch_report.csv)"})],
            ignore_index=True)
        frame = frame[~missing].assign(photo=lambda f: f["id"].map(usable))
        return frame, photos_dir, left_out.rename(columns={"id": "house"}).assign(
            file=display_path(dirs.data / "airbnb" / "raw"))
    data_dir = course_csv_dir(data_dir)
    if data_dir is None:
        raise FileNotFoundError(
            "the airbnb dataset needs --data-dir (the folder of the course CSVs "
            "trainAttrX.csv and testAttrX.csv) or --listings-url (an Inside Airbnb "
            f"listings.csv.gz, see {airbnb.LISTINGS_PAGE})")
    folder = Path(data_dir)
    parts = []
    for split, name in (("train", "trainAttrX.csv"), ("test", "testAttrX.csv")):
        part = airbnb.read_course_csv(folder / name)
        part.insert(0, "id", [f"{split}-{i}" for i in range(len(part))])
        part["course_split"] = split
        parts.append(part)
    return pd.concat(parts, ignore_index=True), None, pd.DataFrame(
        columns=["house", "file", "reason"])


def load_split(dataset: str, data_dir: str | os.PathLike | None = None, seed: int = 42,
               dirs: ProjectDirs | None = None, verbose: bool = True,
               listings_url: str | None = None) -> TabularData:
    """Reads a tabular dataset and its split manifest (written on first use, then reread).

    ``houses`` (and ``sample_houses``) is split by :func:`split_rows` (stratified by price,
    60/15/25). ``airbnb`` from the course CSVs keeps the course's own test split (250
    listings) and carves validation out of its training rows; ``airbnb`` from an Inside
    Airbnb listings file (``listings_url``) downloads the file and every listing's photo once
    (see :mod:`cnnlab.tabular.airbnb`), keeps the listings with a usable photo (the others are
    listed as left out) as a one-room photo dataset (room ``photo``) and splits them like
    ``houses``. The manifest ``data/<dataset>/manifest.csv`` lists ``id`` and ``split``;
    when it exists and names the same rows it is reused, so every model (and every rerun)
    sees the same split.

    Args:
        dataset: ``houses``, ``sample_houses`` or ``airbnb``.
        data_dir: Local copy of the data (``houses``: downloaded when None;
            ``sample_houses``: generated when None).
        seed: Seed of a new split.
        dirs: Project folders.
        verbose: Print the split counts and every row left out.
        listings_url: ``airbnb`` only: an Inside Airbnb ``listings.csv.gz`` URL or local
            file, used instead of ``data_dir``.

    Returns:
        The rows with their ``split``.

    Raises:
        ValueError: If an existing manifest names rows that are not in the data; the message
            says to delete it to re-split.
    """
    dirs = dirs or project_dirs()
    spec = get_tabular_spec(dataset)
    left_out = pd.DataFrame(columns=["house", "file", "reason"])
    if dataset in HOUSES_LAYOUT:
        root = HOUSES_LAYOUT[dataset](data_dir, dirs)
        frame, left_out = read_houses(root)
        frame.insert(0, "id", frame.pop("house").astype(str))
    else:
        frame, root, left_out = _read_airbnb(data_dir, listings_url, dirs, verbose)
        if root is not None:
            spec = dataclasses.replace(
                spec, rooms=("photo",),
                numeric=tuple(c for c in spec.numeric if c in frame and frame[c].notna().any()))
    manifest_path = dirs.data / dataset / "manifest.csv"
    if manifest_path.is_file():
        manifest = pd.read_csv(manifest_path, dtype={"id": str})
        unknown = sorted(set(manifest["id"]) - set(frame["id"]))
        if unknown:
            raise ValueError(
                f"{display_path(manifest_path)} names {len(unknown)} row(s) not in the data "
                f"(first: {unknown[:3]}); delete it to split again")
        split = manifest.set_index("id")["split"]
        frame = frame[frame["id"].isin(split.index)].copy()
        frame["split"] = frame["id"].map(split)
    else:
        if dataset == "airbnb" and root is None:
            split = pd.Series("test", index=frame.index)
            train = frame.index[frame["course_split"] == "train"]
            strata = pd.qcut(np.log(frame.loc[train, spec.target]), 5, labels=False)
            _, val = train_test_split(train, test_size=0.15, random_state=seed, stratify=strata)
            split.loc[train] = "train"
            split.loc[val] = "val"
            frame["split"] = split
        else:
            frame["split"] = split_rows(frame, spec.target, seed=seed)
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(manifest_path) as tmp:
            frame[["id", "split"]].to_csv(tmp, index=False)
    data = TabularData(spec, frame.reset_index(drop=True), root, left_out)
    if verbose:
        counts = data.counts()
        print(f"{spec.title}: {len(frame)} rows (train {counts['train']}, val {counts['val']}, "
              f"test {counts['test']}); split manifest {display_path(manifest_path)}")
        for _, row in left_out.iterrows():
            print(f"left out: {row['file']}: {row['reason']}")
    return data
