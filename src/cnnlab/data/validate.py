"""Dataset validation: every file checked before it can reach a manifest.

:func:`validate_folder` opens every file below a class-per-folder tree (with or without split
folders) and sorts what it finds into the problems of :data:`PROBLEMS`: files that are not
images, empty, truncated or undecodable; colour modes and formats the training decoder does not
read as they are; EXIF-rotated photos; exact duplicates (SHA-256), within a split and across
splits (a leak); the same bytes filed under two classes (a label conflict: every copy is left
out, since which label is right is unknown); empty class folders and class names that differ
between splits. Nothing raises on a bad file: each one gets a row in the report, and the
manifest leaves out what cannot be used. ``cnnlab validate DATA_DIR`` prints the report;
``--fix`` moves the excluded files to a quarantine folder (never deletes).

Files that are usable but odd are kept: grayscale, palette, RGBA, CMYK and 16-bit JPEGs and
PNGs are converted to 8-bit RGB by TensorFlow's decoder (``channels=3``), which gives the
array :func:`cnnlab.data.images.read_image` gives; photos with an EXIF orientation, and files
TensorFlow does not decode as Pillow does (WebP, TIFF, GIF, palette BMP, ...; see
:func:`cnnlab.data.images.decodes_as_is`), get an upright RGB PNG copy under
``data/<dataset>/converted/`` (:func:`cnnlab.data.images.write_converted`) that the manifest
points to.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image, UnidentifiedImageError

from cnnlab.config import display_path
from cnnlab.data.images import EXIF_ORIENTATION as EXIF_ORIENTATION  # re-exported names
from cnnlab.data.images import IMAGE_SUFFIXES, decodes_as_is, exif_orientation
from cnnlab.data.images import TF_FORMATS as TF_FORMATS
from cnnlab.data.images import write_converted as write_converted
from cnnlab.files import atomic_path

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}
SPLITS = ("train", "val", "test")
QUARANTINE = ".quarantine"


@dataclass(frozen=True)
class Problem:
    """One kind of finding.

    Attributes:
        code: Short name used in reports and tests.
        action: ``"excluded"`` (left out of the manifest, quarantined by ``--fix``),
            ``"converted"`` (kept; decoded to RGB or copied upright) or ``"reported"``.
        fix: What the user can do.
    """

    code: str
    action: str
    fix: str


PROBLEMS: dict[str, Problem] = {p.code: p for p in (
    Problem("not_image", "excluded", "remove it or move it out of the class folders"),
    Problem("empty", "excluded", "re-download or delete the 0-byte file"),
    Problem("truncated", "excluded", "re-download the file; its data ends early"),
    Problem("undecodable", "excluded", "re-download or re-save the file with an image editor"),
    Problem("decompression_bomb", "excluded",
            "over Pillow's pixel limit (PIL.Image.MAX_IMAGE_PIXELS): shrink it, or raise the "
            "limit only for files you trust"),
    Problem("duplicate", "excluded", "delete the copy; it would count twice"),
    Problem("cross_split_duplicate", "excluded",
            "the same image is in two splits (a leak); keep one copy, in train"),
    Problem("label_conflict", "excluded",
            "the same image is filed under two or more classes; keep it in the right class "
            "folder and delete the others"),
    Problem("class_not_in_train", "excluded",
            "rename the folder to a train class or add train images for it"),
    Problem("mode", "converted", "none needed: decoded as 8-bit RGB"),
    Problem("format", "converted", "none needed: an RGB PNG copy is used for training"),
    Problem("exif_rotated", "converted", "none needed: an upright copy is used for training"),
    Problem("empty_class", "reported", "add images or remove the folder"),
    Problem("class_name_mismatch", "reported",
            "rename one of the folders so that every split uses the same class name"),
    Problem("class_missing_from_split", "reported",
            "add images of the class to that split, or accept that it is not measured there"),
)}


def class_folders(root: Path) -> list[tuple[str | None, Path]]:
    """``(split or None, class folder)`` pairs below ``root`` (hidden folders skipped)."""
    def folders(path: Path) -> list[Path]:
        return sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))

    splits = {SPLIT_ALIASES[c.name.lower()]: c for c in folders(root)
              if c.name.lower() in SPLIT_ALIASES}
    if splits:
        return [(s, c) for s, d in sorted(splits.items(), key=lambda i: SPLITS.index(i[0]))
                for c in folders(d)]
    return [(None, c) for c in folders(root)]


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def inspect_file(path: Path) -> dict:
    """Checks one file: reads it, hashes it and decodes it fully with Pillow.

    JPEGs are decoded through libjpeg's DCT scaling (``Image.draft``) so a 5-megapixel photo
    costs a fraction of a full decode; truncation is still detected, because the whole stream
    is read.

    Args:
        path: Any file.

    Returns:
        ``bytes``, ``sha256``, ``width``, ``height``, ``mode``, ``format``, ``orientation``
        (EXIF value, 1 when absent), ``problem`` (a code of :data:`PROBLEMS` or ``""``) and
        ``detail`` (the reason in words). Never raises for bad content.
    """
    record = {"bytes": 0, "sha256": "", "width": 0, "height": 0, "mode": "", "format": "",
              "orientation": 1, "problem": "", "detail": ""}
    data = path.read_bytes()
    record["bytes"] = len(data)
    if not data:
        return {**record, "problem": "empty", "detail": "0 bytes"}
    record["sha256"] = sha256_bytes(data)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return {**record, "problem": "not_image",
                "detail": f"file type {path.suffix or '(no suffix)'} is not an image "
                          f"({', '.join(IMAGE_SUFFIXES)})"}
    try:
        with Image.open(path) as image:
            record.update(width=image.width, height=image.height, mode=image.mode,
                          format=image.format or "")
            record["orientation"] = exif_orientation(image)
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Image.DecompressionBombError as error:
        return {**record, "problem": "decompression_bomb", "detail": str(error)}
    except UnidentifiedImageError:
        return {**record, "problem": "not_image",
                "detail": "Pillow cannot identify it as an image (wrong content for "
                          f"{path.suffix})"}
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = str(error)
        code = "truncated" if re.search(r"truncat|premature|end of", text, re.I) else \
            "undecodable"
        return {**record, "problem": code, "detail": text or type(error).__name__}
    if not decodes_as_is(record["format"], record["mode"]):
        kind = record["format"] if record["format"] != "BMP" else f"{record['mode']} BMP"
        return {**record, "problem": "format",
                "detail": f"{kind} is not decoded by TensorFlow as Pillow decodes it"}
    if record["orientation"] not in (0, 1):
        return {**record, "problem": "exif_rotated",
                "detail": f"EXIF orientation {record['orientation']}"}
    if record["mode"] != "RGB":
        return {**record, "problem": "mode", "detail": f"mode {record['mode']}"}
    return record


def needs_copy(problem: str) -> bool:
    """Whether a kept file is used through an upright RGB copy instead of the original."""
    return problem in ("format", "exif_rotated")


@dataclass
class ValidationReport:
    """What :func:`validate_folder` found.

    Attributes:
        root: The dataset root; ``path`` columns are relative to it.
        files: One row per file: ``path``, ``split`` (None without split folders), ``label``,
            the columns of :func:`inspect_file`, ``action`` (``"ok"``, ``"converted"``,
            ``"excluded"``) and ``fix`` (advice for this file, ``""`` when the problem's
            :attr:`Problem.fix` applies as it is).
        classes: Findings about class folders: ``split``, ``label``, ``problem``, ``detail``.
    """

    root: Path
    files: pd.DataFrame
    classes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["split", "label", "problem", "detail"]))

    def usable(self) -> pd.DataFrame:
        """Rows of the files a manifest may use (``ok`` and ``converted``)."""
        return self.files[self.files["action"] != "excluded"].reset_index(drop=True)

    def excluded(self) -> pd.DataFrame:
        """Rows of the files left out."""
        return self.files[self.files["action"] == "excluded"].reset_index(drop=True)

    def findings(self) -> pd.DataFrame:
        """Every finding, files and classes: ``problem, action, split, label, path, detail,
        fix``, sorted by action then problem."""
        files = self.files[self.files["problem"] != ""]
        own_fix = files["fix"] if "fix" in files else pd.Series("", index=files.index)
        rows = pd.concat([
            files[["problem", "split", "label", "path", "detail"]].assign(fix=own_fix),
            self.classes.assign(path="", fix=""),
        ], ignore_index=True)
        rows["action"] = rows["problem"].map(lambda c: PROBLEMS[c].action)
        rows["fix"] = [fix if isinstance(fix, str) and fix else PROBLEMS[code].fix
                       for code, fix in zip(rows["problem"], rows["fix"], strict=True)]
        order = {"excluded": 0, "converted": 1, "reported": 2}
        rows = rows.sort_values(["action", "problem", "path"],
                                key=lambda s: s.map(order) if s.name == "action" else s)
        return rows[["problem", "action", "split", "label", "path", "detail", "fix"]] \
            .reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """Counts per problem: ``problem, action, count, fix``, plus an ``ok`` row."""
        return summarize(self.findings(), int((self.files["action"] == "ok").sum()))

    def __str__(self) -> str:
        files = len(self.files)
        lines = [f"{display_path(self.root)}: {files} files, "
                 f"{len(self.usable())} usable ({int((self.files['action'] == 'converted').sum())}"
                 f" converted), {len(self.excluded())} excluded, "
                 f"{len(self.classes)} class finding(s)"]
        for row in self.findings().itertuples():
            where = row.path or f"{row.split + '/' if row.split else ''}{row.label}/"
            lines.append(f"  [{row.action}] {row.problem}: {where}: {row.detail}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes :meth:`findings` as CSV (atomically)."""
        with atomic_path(Path(path)) as tmp:
            self.findings().to_csv(tmp, index=False)
        return Path(path)

    def quarantine(self, destination: str | os.PathLike | None = None) -> list[Path]:
        """Moves every excluded file to a quarantine folder; never deletes anything.

        Args:
            destination: Folder to move to; default ``<root>/.quarantine`` (hidden, so scans
                skip it). The relative path is kept, so a file can be moved back by hand.

        Returns:
            The new paths.

        Raises:
            FileExistsError: If a file of the same name is already in quarantine.
        """
        destination = Path(destination) if destination else self.root / QUARANTINE
        moved = []
        for row in self.excluded().itertuples():
            target = destination / row.path
            if target.exists():
                raise FileExistsError(f"{target} already exists in quarantine; move it away "
                                      f"before quarantining {row.path} again")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.root / row.path), target)
            moved.append(target)
        return moved


def summarize(findings: pd.DataFrame, ok: int) -> pd.DataFrame:
    """Counts of :meth:`ValidationReport.findings` per problem, after an ``ok`` row.

    Args:
        findings: Rows with ``problem`` and ``action`` columns.
        ok: Files with no finding.

    Returns:
        ``problem, action, count, fix``.
    """
    rows = [{"problem": "ok", "action": "used", "count": ok, "fix": ""}]
    if not findings.empty:
        table = findings.groupby(["problem", "action"], sort=False).size().rename("count")
        rows += [{"problem": p, "action": a, "count": int(n), "fix": PROBLEMS[p].fix}
                 for (p, a), n in table.items()]
    return pd.DataFrame(rows)


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name).strip().lower()


def _class_findings(files: pd.DataFrame, folders: list[tuple[str | None, Path]]) -> list[dict]:
    findings = []
    used = files[files["action"] != "excluded"]
    used = set(zip(used["split"].fillna(""), used["label"], strict=True))
    for split, folder in folders:
        if (split or "", folder.name) not in used:
            findings.append({"split": split, "label": folder.name, "problem": "empty_class",
                             "detail": "no usable image"})
    if files["split"].isna().all():
        return findings
    named = files[(files["action"] != "excluded") | (files["problem"] == "class_not_in_train")]
    labels = {s: set(g["label"]) for s, g in named.groupby("split")}
    train = labels.get("train", set())
    for split in [s for s in SPLITS if s in labels and s != "train"]:
        for label in sorted(labels[split] - train):
            near = [t for t in train if _normalise(t) == _normalise(label)]
            if near:
                findings.append({"split": split, "label": label, "problem": "class_name_mismatch",
                                 "detail": f"train calls it {near[0]!r}"})
        for label in sorted(train - labels[split]):
            findings.append({"split": split, "label": label,
                             "problem": "class_missing_from_split",
                             "detail": f"in train but not in {split}"})
    return findings


def validate_folder(
    root: str | os.PathLike,
    classes: Iterable[str] | None = None,
    workers: int | None = None,
) -> ValidationReport:
    """Checks every file below a class-per-folder dataset.

    Rules, in order: each file is inspected (:func:`inspect_file`); exact copies (same
    SHA-256) filed under two or more classes are a ``label_conflict`` and all of them are left
    out (class names that differ only in case, spaces, ``_`` or ``-`` count as one class);
    among copies within one class the first in split order train, val, test (then path
    order) is kept, a copy in the same split is a ``duplicate`` and a copy in a later split a
    ``cross_split_duplicate`` (it would leak test images into training); images of a class
    absent from train are ``class_not_in_train``. Class folders with no usable image, class
    names that differ only in case, spaces, ``_`` or ``-`` between splits, and train classes
    missing from a split are reported.

    Args:
        root: Dataset root: class folders, or ``train``/``valid``/``test`` folders of class
            folders. Hidden folders (``.quarantine``) are skipped.
        classes: Keep only these class folders (names before any renaming); None keeps all.
        workers: Threads for reading (default: CPU count).

    Returns:
        The :class:`ValidationReport`.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
        ValueError: If ``root`` holds no class folder, or ``classes`` names one that is absent.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root} does not exist")
    folders = class_folders(root)
    if classes is not None:
        wanted = list(classes)
        found = {c.name for _, c in folders}
        missing = sorted(set(wanted) - found)
        if missing:
            raise ValueError(f"classes {missing} are not folders of {display_path(root)}; "
                             f"available: {sorted(found)}")
        folders = [(s, c) for s, c in folders if c.name in wanted]
    if not folders:
        raise ValueError(f"{display_path(root)} has no class folders; expected <class>/<image> "
                         f"or train/<class>/<image>")
    jobs = []
    for split, folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not any(p.startswith(".") for p in
                                          path.relative_to(root).parts):
                jobs.append((split, folder.name, path))

    def check(job):
        split, label, path = job
        return {"path": path.relative_to(root).as_posix(), "split": split, "label": label,
                **inspect_file(path)}

    with ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2)) as pool:
        rows = list(pool.map(check, jobs))
    columns = ["path", "split", "label", "bytes", "sha256", "width", "height", "mode",
               "format", "orientation", "problem", "detail"]
    files = pd.DataFrame(rows, columns=columns)
    files["split"] = files["split"].astype(object)
    files["action"] = files["problem"].map(lambda c: PROBLEMS[c].action if c else "ok")
    files["fix"] = ""
    _mark_duplicates(files)
    _mark_unknown_classes(files)
    classes_found = pd.DataFrame(_class_findings(files, folders),
                                 columns=["split", "label", "problem", "detail"])
    return ValidationReport(root, files, classes_found)


def _mark_duplicates(files: pd.DataFrame) -> None:
    order = {s: i for i, s in enumerate(SPLITS)}
    candidates = files[(files["action"] != "excluded") & (files["sha256"] != "")]
    rank = candidates["split"].map(lambda s: order.get(s, 0))
    candidates = candidates.assign(_rank=rank).sort_values(["_rank", "path"])
    for _, group in candidates.groupby("sha256", sort=False):
        if len(group) < 2:
            continue
        if group["label"].map(_normalise).nunique() > 1:
            _mark_label_conflict(files, group)
            continue
        keep = group.iloc[0]
        for index, row in group.iloc[1:].iterrows():
            cross = row["split"] != keep["split"]
            files.loc[index, ["problem", "action", "detail"]] = [
                "cross_split_duplicate" if cross else "duplicate", "excluded",
                f"same bytes as {keep['path']}"]


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _mark_label_conflict(files: pd.DataFrame, group: pd.DataFrame) -> None:
    """Excludes every copy of one image filed under more than one class, naming them all."""
    labels = _join([repr(label) for label in sorted(set(group["label"]))])
    others = "s" if len(group) > 2 else ""
    fix = (f"the same image is filed under {labels}; keep it in the right class folder and "
           f"delete the other{others}")
    for index, row in group.iterrows():
        copies = ", ".join(p for p in group["path"] if p != row["path"])
        files.loc[index, ["problem", "action", "detail", "fix"]] = [
            "label_conflict", "excluded", f"filed under {labels}: same bytes as {copies}", fix]


def _mark_unknown_classes(files: pd.DataFrame) -> None:
    if files["split"].isna().all():
        return
    train = set(files.loc[(files["split"] == "train") & (files["action"] != "excluded"), "label"])
    unknown = (files["split"] != "train") & ~files["label"].isin(train) & \
        (files["action"] != "excluded")
    files.loc[unknown, ["problem", "action"]] = ["class_not_in_train", "excluded"]
    files.loc[unknown, "detail"] = [f"class {label!r} has no train images"
                                    for label in files.loc[unknown, "label"]]


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Extracts a zip archive, refusing members that would land outside ``destination``.

    A member named ``../evil``, an absolute path, a drive letter or a symbolic link is a
    "zip slip" (CVE-2018-1002200 class of bug): nothing is extracted and the member is named.
    Extraction goes to a temporary folder renamed into place, so a failure leaves no half
    dataset.

    Args:
        archive: A ``.zip`` file (e.g. a Kaggle dataset downloaded by hand).
        destination: Folder to create; must not exist yet.

    Returns:
        ``destination``.

    Raises:
        ValueError: If a member's path is unsafe, naming it.
        FileExistsError: If ``destination`` exists.
        zipfile.BadZipFile: If ``archive`` is not a zip file.
    """
    archive, destination = Path(archive), Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; remove it or extract elsewhere")
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            name = PurePosixPath(member.filename.replace("\\", "/"))
            is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
            if name.is_absolute() or ".." in name.parts or re.match(r"^[A-Za-z]:", str(name)) \
                    or is_link:
                raise ValueError(f"{archive.name}: member {member.filename!r} would be written "
                                 f"outside {destination.name}/ (path traversal); refusing to "
                                 f"extract this archive")
        tmp = destination.with_name(f".{destination.name}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        zipped.extractall(tmp)
    tmp.rename(destination)
    return destination
