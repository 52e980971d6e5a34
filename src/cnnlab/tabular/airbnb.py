"""Airbnb listing prices: the course's Madrid CSVs, Inside Airbnb listings and their photos.

The course project predicts a listing's nightly price from its tabular columns plus its photo.
Two sources share one set of 22 canonical columns (:data:`COLUMNS`, snake_case, in the
course CSV order):

1. The course's own CSVs (``trainAttrX.csv`` 750 rows, ``testAttrX.csv`` 250 rows, raw with
   missing values; ``train_data.csv`` / ``test_data.csv`` as the course imputed them),
   ``;``-separated, found in ``datasets/airbnb-madrid/`` of the shared assets folder. They
   are an OpenDataSoft ``airbnb-listings`` export (2017) of Inside Airbnb data; they carry no
   photos. Read them with :func:`read_course_csv`.
2. An Inside Airbnb ``listings.csv.gz`` (http://insideairbnb.com/get-the-data/, CC BY 4.0),
   e.g. ``https://data.insideairbnb.com/spain/comunidad-de-madrid/madrid/<date>/data/
   listings.csv.gz``: :func:`fetch_listings` downloads it (cached), :func:`read_listings`
   parses it into the canonical columns, :func:`fetch_photos` downloads each listing's
   ``picture_url`` and :func:`photo_summary` says in one line how that went.

Prices are in the currency of the scrape as Inside Airbnb writes it (``"$1,234.00"``; the
course's ``Price`` is USD per night). ``review_scores_rating`` is kept on the file's own scale:
0-100 in the course CSVs and in Inside Airbnb files before 2020, 0-5 in newer files (the
sub-scores are 0-10 before, 0-5 after); rescale before mixing the two.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import http.client
import io
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from cnnlab.config import display_path
from cnnlab.files import atomic_path

#: The 22 canonical column names, in the course CSV order.
COLUMNS: tuple[str, ...] = (
    "host_listings_count",
    "host_total_listings_count",
    "accommodates",
    "bathrooms",
    "bedrooms",
    "beds",
    "price",
    "weekly_price",
    "monthly_price",
    "security_deposit",
    "cleaning_fee",
    "guests_included",
    "extra_people",
    "availability_365",
    "review_scores_rating",
    "review_scores_accuracy",
    "review_scores_cleanliness",
    "review_scores_location",
    "calculated_host_listings_count",
    "host_since_in_days",
    "entire_home_apt",
    "private_room",
)

#: The regression target (nightly price).
TARGET = "price"

#: The course CSV header of each canonical column.
COURSE_HEADERS: dict[str, str] = dict(
    zip(
        (
            "Host Listings Count",
            "Host Total Listings Count",
            "Accommodates",
            "Bathrooms",
            "Bedrooms",
            "Beds",
            "Price",
            "Weekly Price",
            "Monthly Price",
            "Security Deposit",
            "Cleaning Fee",
            "Guests Included",
            "Extra People",
            "Availability 365",
            "Review Scores Rating",
            "Review Scores Accuracy",
            "Review Scores Cleanliness",
            "Review Scores Location",
            "Calculated host listings count",
            "Host Since in Days",
            "Entire home/apt",
            "Private room",
        ),
        COLUMNS,
        strict=True,
    )
)

COURSE_FILES = ("trainAttrX.csv", "testAttrX.csv", "train_data.csv", "test_data.csv")
COURSE_DIR = "datasets/airbnb-madrid"
LISTINGS_PAGE = "http://insideairbnb.com/get-the-data/"

#: Name of the per-listing photo report written into the photos folder.
REPORT_NAME = "fetch_report.csv"
#: Every status :func:`fetch_photos` reports.
PHOTO_STATUSES = ("ok", "cached", "dead", "too_large", "not_image", "no_url")
#: Statuses that a rerun does not request again unless ``retry_dead=True``.
FAILED_STATUSES = ("dead", "too_large", "not_image")
REPORT_COLUMNS = ("id", "picture_url", "status", "error", "path")

USER_AGENT = "cnnlab/0.1 (course project; Inside Airbnb listing photos)"

# Columns written as prices ("$1,234.00") in listings files, the ones derived from other
# columns there, and the rest, copied as numbers.
_MONEY = ("price", "weekly_price", "monthly_price", "security_deposit", "cleaning_fee",
          "extra_people")
_DERIVED = ("bathrooms", "host_since_in_days", "entire_home_apt", "private_room")
_NUMERIC = tuple(c for c in COLUMNS if c not in _MONEY + _DERIVED)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_FIRST_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]+")
_BACKOFF_S = 0.5  # first retry waits this long, then twice as long each time


# --------------------------------------------------------------------------- course CSVs


def read_course_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Reads one of the course's ``;``-separated Madrid CSVs into the canonical columns.

    Args:
        path: ``trainAttrX.csv``, ``testAttrX.csv`` (raw, with missing values),
            ``train_data.csv`` or ``test_data.csv`` (imputed by the course), from
            ``datasets/airbnb-madrid/`` of the shared assets folder. A CSV whose header already
            uses the canonical names is accepted as well.

    Returns:
        One row per listing (750 for ``trainAttrX.csv``), columns exactly :data:`COLUMNS` in
        that order, all float64; empty cells are NaN (e.g. 566 of ``weekly_price`` in
        ``trainAttrX.csv``). ``price`` is USD per night, ``host_since_in_days`` days between
        ``host_since`` and the scrape, ``entire_home_apt`` / ``private_room`` 0/1.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message says where the course CSVs
            are expected).
        ValueError: The header lacks some course columns or has unknown ones (both listed,
            with the file), or a column holds text that is not a number.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"course CSV {path} not found; the course's Airbnb CSVs ({', '.join(COURSE_FILES)}) "
            f"are expected in {COURSE_DIR}/ of the shared assets folder (../shared beside the "
            f"checkout, or $CNNLAB_SHARED_DIR)"
        )
    frame = pd.read_csv(path, sep=";")
    canonical = set(COLUMNS)
    renamed: dict[str, str] = {}
    unknown: list[str] = []
    for header in frame.columns:
        name = COURSE_HEADERS.get(str(header).strip(), str(header).strip())
        if name in canonical and name not in renamed.values():
            renamed[header] = name
        else:
            unknown.append(str(header))
    missing = [header for header, name in COURSE_HEADERS.items() if name not in renamed.values()]
    if missing or unknown:
        hint = (" (is it ';'-separated?)" if len(frame.columns) == 1 else "")
        raise ValueError(
            f"{path} does not have the course's Airbnb header{hint}: missing columns "
            f"{missing or 'none'}; unknown columns {unknown or 'none'}"
        )
    frame = frame.rename(columns=renamed)[list(COLUMNS)]
    for name in COLUMNS:
        try:
            frame[name] = pd.to_numeric(frame[name], errors="raise").astype("float64")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: column {name!r} is not numeric ({exc})") from exc
    return frame.reset_index(drop=True)


# ------------------------------------------------------------------------ Inside Airbnb file


def _parse_money(value: object) -> float:
    """``"$1,234.00"`` → 1234.0; raises ValueError on anything else that is not empty."""
    text = str(value).strip()
    text = text.lstrip("$€£").replace(",", "").strip()
    if not _NUMBER.fullmatch(text):
        raise ValueError(text)
    return float(text)


def _money_column(series: pd.Series) -> pd.Series:
    """A price column parsed to float64; empty or unparseable cells become NaN."""
    def parse(value: object) -> float:
        if pd.isna(value) or not str(value).strip():
            return np.nan
        try:
            return _parse_money(value)
        except ValueError:
            return np.nan

    return series.map(parse).astype("float64")


def _bathrooms_from_text(value: object) -> float:
    """``"1.5 baths"`` → 1.5, ``"1 shared bath"`` → 1, ``"Half-bath"`` → 0.5, else NaN."""
    if pd.isna(value):
        return np.nan
    text = str(value).strip().lower()
    if "half" in text:
        return 0.5
    match = _FIRST_NUMBER.search(text)
    return float(match.group()) if match else np.nan


def _price_problem(value: object) -> tuple[float, str]:
    """The parsed price and ``""``, or NaN and why the listing is left out."""
    if pd.isna(value) or not str(value).strip():
        return np.nan, "price missing"
    try:
        price = _parse_money(value)
    except ValueError:
        return np.nan, f"price {str(value).strip()!r} is not a number"
    if not np.isfinite(price) or price <= 0:
        return np.nan, f"price {price:g} is not positive"
    return price, ""


def read_listings(path: str | os.PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reads an Inside Airbnb ``listings.csv`` / ``listings.csv.gz`` into canonical columns.

    Source: http://insideairbnb.com/get-the-data/ (CC BY 4.0); column meanings in its data
    dictionary. Derivations:

    * ``price`` and the other price columns (``weekly_price``, ``monthly_price``,
      ``security_deposit``, ``cleaning_fee``, ``extra_people``, only in files before 2020)
      parsed from ``"$1,234.00"``; an unparseable non-target price becomes NaN.
    * ``bathrooms`` from ``bathrooms``, else the number in ``bathrooms_text`` (``"1.5 baths"``
      → 1.5, ``"1 shared bath"`` → 1, ``"Half-bath"`` → 0.5).
    * ``host_since_in_days`` = (``last_scraped`` − ``host_since``) in days (NaN if a date is
      missing or unparseable, or host_since is after the scrape).
    * ``entire_home_apt`` / ``private_room``: one-hot of ``room_type`` ("Shared room" and
      "Hotel room" are 0/0; an empty room_type is NaN/NaN).
    * counts, ``availability_365`` and the review scores as given (ratings on the file's own
      scale: 0-100 before 2020, 0-5 after).

    Columns the file lacks (e.g. ``weekly_price`` in new files) are not invented: they are
    simply absent from ``rows``.

    Args:
        path: The listings file; pandas decompresses ``.gz`` from the suffix.

    Returns:
        ``(rows, left_out)``. ``rows``: one row per kept listing, columns ``id`` (str, e.g.
        ``"1234567890123456789"``, exact), ``picture_url`` (str, ``""`` when missing) and the
        derivable :data:`COLUMNS` in their canonical order, float64; ``price`` > 0 always.
        ``left_out``: one row per dropped listing, columns ``id`` and ``reason`` (``"id
        missing"``, ``"id 'a/b' is not usable as a file name"``, ``"price missing"``,
        ``"price '$abc' is not a number"``, ``"price 0 is not positive"``, ``"duplicate id
        (kept the first row)"``). Bad rows never raise.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file has no ``id`` or ``price`` column (both named with the file), or
            cannot be read as CSV at all (e.g. a truncated download).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"listings file {path} not found; download one from {LISTINGS_PAGE} "
            f"(or with fetch_listings) and pass its path"
        )
    try:
        raw = pd.read_csv(path, dtype=str, low_memory=False)
    except (EOFError, OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path} could not be read as an Inside Airbnb listings CSV: {exc}") \
            from exc
    raw.columns = [str(name).strip() for name in raw.columns]
    missing = [name for name in ("id", "price") if name not in raw.columns]
    if missing:
        raise ValueError(
            f"{path} is not an Inside Airbnb listings file: missing columns {missing} "
            f"(it has {len(raw.columns)} columns: {list(raw.columns)[:10]}...)"
        )

    ids = raw["id"].map(lambda value: "" if pd.isna(value) else str(value).strip())
    prices = raw["price"].map(_price_problem)
    reasons: list[str] = []
    for listing, (_, price_reason) in zip(ids, prices):
        if not listing:
            reasons.append("id missing")
        elif not _SAFE_ID.fullmatch(listing):
            reasons.append(f"id {listing!r} is not usable as a file name")
        else:
            reasons.append(price_reason)
    reasons_s = pd.Series(reasons, index=raw.index, dtype=object)
    duplicated = (reasons_s == "") & ids.where(reasons_s == "").duplicated(keep="first")
    reasons_s[duplicated] = "duplicate id (kept the first row)"

    out = pd.DataFrame(index=raw.index)
    out["id"] = ids.astype(str)
    if "picture_url" in raw.columns:
        out["picture_url"] = raw["picture_url"].fillna("").astype(str).str.strip()
    else:
        out["picture_url"] = ""
    derived: dict[str, pd.Series] = {}
    for name in _NUMERIC:
        if name in raw.columns:
            derived[name] = pd.to_numeric(raw[name].str.strip(), errors="coerce").astype(
                "float64")
    for name in _MONEY:
        if name in raw.columns:
            derived[name] = _money_column(raw[name])
    derived["price"] = pd.Series([price for price, _ in prices], index=raw.index,
                                 dtype="float64")
    if "bathrooms" in raw.columns or "bathrooms_text" in raw.columns:
        bathrooms = pd.Series(np.nan, index=raw.index, dtype="float64")
        if "bathrooms" in raw.columns:
            bathrooms = pd.to_numeric(raw["bathrooms"].str.strip(), errors="coerce").astype(
                "float64")
        if "bathrooms_text" in raw.columns:
            bathrooms = bathrooms.fillna(raw["bathrooms_text"].map(_bathrooms_from_text))
        derived["bathrooms"] = bathrooms.astype("float64")
    if "host_since" in raw.columns and "last_scraped" in raw.columns:
        since = pd.to_datetime(raw["host_since"].str.strip(), format="%Y-%m-%d",
                               errors="coerce")
        scraped = pd.to_datetime(raw["last_scraped"].str.strip(), format="%Y-%m-%d",
                                 errors="coerce")
        days = (scraped - since).dt.days.astype("float64")
        derived["host_since_in_days"] = days.where(days >= 0)
    if "room_type" in raw.columns:
        room = raw["room_type"].str.strip().str.lower()
        known = room.notna() & (room != "")
        derived["entire_home_apt"] = (room == "entire home/apt").astype("float64").where(known)
        derived["private_room"] = (room == "private room").astype("float64").where(known)
    for name in COLUMNS:
        if name in derived:
            out[name] = derived[name]

    kept = reasons_s == ""
    rows = out[kept].reset_index(drop=True)
    left_out = pd.DataFrame({"id": ids[~kept].astype(str).to_numpy(),
                             "reason": reasons_s[~kept].astype(str).to_numpy()})
    return rows, left_out


def listings_file_name(url: str) -> str:
    """The cache file name of a listings URL: its path parts joined by ``-``, ``data`` dropped.

    Args:
        url: e.g. ``https://data.insideairbnb.com/spain/comunidad-de-madrid/madrid/2024-09-13/
            data/listings.csv.gz``.

    Returns:
        e.g. ``"spain-comunidad-de-madrid-madrid-2024-09-13-listings.csv.gz"``, unique per
        country/region/city/date and file.

    Raises:
        ValueError: The URL has no file name in its path.
    """
    parts = [urllib.parse.unquote(part) for part in urllib.parse.urlsplit(url).path.split("/")]
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in parts if part]
    parts = [part for part in parts if part not in ("data", ".", "..")]
    if not parts or not Path(parts[-1]).suffix:
        raise ValueError(
            f"cannot derive a file name from {url!r}; expected a URL ending in a file such as "
            f".../madrid/2024-09-13/data/listings.csv.gz (see {LISTINGS_PAGE})"
        )
    return "-".join(parts)


def _gzip_is_complete(path: Path) -> bool:
    """True unless ``path`` is a ``.gz`` whose stream is truncated or corrupt."""
    if path.suffix != ".gz":
        return path.stat().st_size > 0
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass
    except (EOFError, OSError):
        return False
    return True


def fetch_listings(url: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Downloads an Inside Airbnb listings file once into ``cache_dir``; or checks a local path.

    The download goes through ``keras.utils.get_file`` (imported only then) under the name
    :func:`listings_file_name` gives (e.g. ``spain-comunidad-de-madrid-madrid-2024-09-13-
    listings.csv.gz``), so files of different cities/dates never collide. A complete file
    already in ``cache_dir`` is returned without any download; a truncated ``.gz`` left by an
    interrupted download is replaced.

    Args:
        url: ``http(s)://`` URL of a ``listings.csv.gz`` (from http://insideairbnb.com/
            get-the-data/, CC BY 4.0), or a local path / ``file://`` URL of one you
            downloaded yourself (used as is).
        cache_dir: Folder to keep downloads in (created if missing).

    Returns:
        Path of the listings file.

    Raises:
        FileNotFoundError: A local path that does not exist (named in the message).
        ValueError: An unsupported URL scheme, or no file name in the URL.
        RuntimeError: The download failed, or gave a corrupt file (the message names the URL
            and says how to pass a local file instead).
    """
    text = os.fspath(url)
    parsed = urllib.parse.urlsplit(text)
    scheme = parsed.scheme.lower()
    local_hint = (f"download it yourself from {LISTINGS_PAGE} (e.g. with a browser) and pass "
                  f"its local path as url=")
    if scheme not in ("http", "https"):
        if scheme == "file":
            local = Path(urllib.request.url2pathname(parsed.path))
        elif "://" in text:
            raise ValueError(f"unsupported URL {text!r}: use an http(s) URL or a local path")
        else:
            local = Path(text).expanduser()
        if not local.is_file():
            raise FileNotFoundError(
                f"listings file {local} does not exist; pass an http(s) URL to download, or "
                f"{local_hint}"
            )
        return local

    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)  # get_file falls back to /tmp if it is missing
    fname = listings_file_name(text)
    target = cache / fname
    if target.is_file():
        if _gzip_is_complete(target):
            return target
        target.unlink()

    import keras  # lazy: importing Keras/TensorFlow costs seconds, only downloads need it

    try:
        downloaded = Path(keras.utils.get_file(fname=fname, origin=text,
                                               cache_dir=str(cache), cache_subdir=""))
    except Exception as exc:  # get_file raises bare Exception for HTTP/URL errors
        raise RuntimeError(
            f"could not download Inside Airbnb listings from {text}: {exc}. Check the URL on "
            f"{LISTINGS_PAGE}, or {local_hint}"
        ) from exc
    if not _gzip_is_complete(downloaded):
        downloaded.unlink(missing_ok=True)
        raise RuntimeError(
            f"the file downloaded from {text} is truncated or not gzip; try again, or "
            f"{local_hint}"
        )
    return downloaded


# ----------------------------------------------------------------------------------- photos


def _fetch_one(url: str, dest: Path, timeout: float, retries: int,
               max_bytes: int) -> tuple[str, str]:
    """Fetches one photo to ``dest``; returns ``(status, error)``, never raises for the link."""
    from PIL import Image

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return "dead", f"not an http(s) URL: {url!r}"
    data = b""
    for attempt in range(retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = (response.headers.get("Content-Length") or "").strip()
                if length.isdigit() and int(length) > max_bytes:
                    return "too_large", f"Content-Length {length} bytes > max_bytes {max_bytes}"
                chunks: list[bytes] = []
                total = 0
                while total <= max_bytes:  # reads at most max_bytes + 1 bytes
                    chunk = response.read(min(1 << 16, max_bytes + 1 - total))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                data = b"".join(chunks)
            break
        except urllib.error.HTTPError as exc:
            exc.close()
            if 500 <= exc.code < 600 and attempt < retries:
                time.sleep(_BACKOFF_S * 2**attempt)
                continue
            return "dead", f"HTTP {exc.code} {exc.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if attempt < retries:
                time.sleep(_BACKOFF_S * 2**attempt)
                continue
            reason = getattr(exc, "reason", None) or exc
            return "dead", f"{type(exc).__name__}: {reason}"
        except ValueError as exc:  # malformed URL
            return "dead", f"invalid URL: {exc}"
    if len(data) > max_bytes:
        return "too_large", f"response body over max_bytes {max_bytes} bytes"
    if not data:
        return "not_image", "empty response"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, bombs...)
        message = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))
        return "not_image", f"{type(exc).__name__}: {message} ({len(data)} bytes)"
    tmp = dest.with_name(f".{dest.stem}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return "ok", ""


def _read_report(path: Path) -> pd.DataFrame:
    """The previous report (all columns str), or an empty one when absent or unreadable."""
    empty = pd.DataFrame({name: pd.Series(dtype=str) for name in REPORT_COLUMNS})
    if not path.is_file():
        return empty
    try:
        report = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return empty
    if not set(REPORT_COLUMNS) <= set(report.columns):
        return empty
    return report[list(REPORT_COLUMNS)]


def fetch_photos(
    rows: pd.DataFrame,
    photos_dir: str | os.PathLike,
    timeout: float = 10.0,
    retries: int = 2,
    max_bytes: int = 5_000_000,
    workers: int = 8,
    retry_dead: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Downloads each listing's ``picture_url`` to ``photos_dir/<id>.jpg``, politely and once.

    Each photo is requested with ``urllib.request`` (a User-Agent header, ``timeout``), retried
    ``retries`` times with a short doubling backoff on connection errors and HTTP 5xx only
    (never on 4xx), limited to ``max_bytes`` (Content-Length checked, at most
    ``max_bytes + 1`` bytes read), checked to decode with Pillow (``verify()``, then a full
    ``load()``) and written under a temporary name then ``os.replace``-d, so an interrupted
    run never leaves a half file. The bytes are stored as served (the decoders sniff the
    format). Photos already in ``photos_dir`` are not fetched again, and listings that an
    earlier report records as dead / too large / not an image (for the same URL) are not
    requested again unless ``retry_dead``: a rerun fetches nothing twice.

    Args:
        rows: Listings with columns ``id`` (letters, digits, ``_`` or ``-``; unique) and
            ``picture_url``, e.g. the ``rows`` of :func:`read_listings`.
        photos_dir: Folder of the photos and the report (created if missing).
        timeout: Seconds per connection attempt / read.
        retries: Extra attempts after a connection error or HTTP 5xx.
        max_bytes: Largest accepted photo, in bytes.
        workers: Concurrent downloads (threads).
        retry_dead: Request again the listings an earlier report records as failed.
        progress: Show a ``tqdm`` progress bar over the requests.

    Returns:
        The report, one row per listing in ``rows`` order, all str: ``id``, ``picture_url``,
        ``status`` (``"ok"`` fetched now, ``"cached"`` file already there, ``"dead"`` HTTP
        4xx / connection error after retries / not an http(s) URL, ``"too_large"``,
        ``"not_image"``, ``"no_url"``), ``error`` (the message, ``""`` if none) and ``path``
        (``"<id>.jpg"`` relative to ``photos_dir`` for ok/cached, else ``""``). It is also
        written atomically to ``photos_dir/fetch_report.csv`` (merged with the rows of
        earlier runs for listings not in ``rows``); ``report.attrs["report_path"]`` holds
        that path.

    Raises:
        ValueError: ``rows`` lacks ``id`` / ``picture_url``, or has duplicate or unsafe ids
            (a single bad link never raises).
    """
    missing = [name for name in ("id", "picture_url") if name not in rows.columns]
    if missing:
        raise ValueError(f"rows lack the columns {missing}; pass the rows of read_listings")
    ids = [str(value).strip() for value in rows["id"]]
    unsafe = [value for value in ids if not _SAFE_ID.fullmatch(value)]
    if unsafe:
        raise ValueError(f"ids not usable as file names (letters, digits, _ and - only): "
                         f"{unsafe[:10]}")
    duplicates = sorted(set(pd.Series(ids)[pd.Series(ids).duplicated()]))
    if duplicates:
        raise ValueError(f"duplicate ids in rows (each photo is saved as <id>.jpg): "
                         f"{duplicates[:10]}")
    urls = ["" if pd.isna(value) else str(value).strip() for value in rows["picture_url"]]

    folder = Path(photos_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    report_path = folder / REPORT_NAME
    previous = _read_report(report_path)
    earlier = {row.id: row for row in previous.itertuples(index=False)}

    results: dict[str, tuple[str, str]] = {}
    to_fetch: list[tuple[str, str]] = []
    for listing, url in zip(ids, urls):
        if (folder / f"{listing}.jpg").is_file() and (folder / f"{listing}.jpg").stat().st_size:
            results[listing] = ("cached", "")
        elif not url:
            results[listing] = ("no_url", "picture_url is empty")
        elif (not retry_dead and listing in earlier and earlier[listing].status in
              FAILED_STATUSES and earlier[listing].picture_url == url):
            results[listing] = (earlier[listing].status, earlier[listing].error)
        else:
            to_fetch.append((listing, url))

    if to_fetch:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(to_fetch), desc="photos", unit="photo", disable=not progress)
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = {
                executor.submit(_fetch_one, url, folder / f"{listing}.jpg", timeout, retries,
                                max_bytes): listing
                for listing, url in to_fetch
            }
            for future in concurrent.futures.as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as exc:  # a bug or a full disk: report it, keep going
                    outcome = ("dead", f"{type(exc).__name__}: {exc}")
                results[futures[future]] = outcome
                bar.update(1)
        except BaseException:
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        executor.shutdown(wait=True)

    report = pd.DataFrame({
        "id": ids,
        "picture_url": urls,
        "status": [results[listing][0] for listing in ids],
        "error": [results[listing][1] for listing in ids],
        "path": [f"{listing}.jpg" if results[listing][0] in ("ok", "cached") else ""
                 for listing in ids],
    }).astype(str)
    others = previous[~previous["id"].isin(set(ids))]
    merged = pd.concat([report, others], ignore_index=True) if len(others) else report
    with atomic_path(report_path) as tmp:
        merged.to_csv(tmp, index=False)
    report.attrs["report_path"] = str(report_path)
    return report


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def photo_summary(report: pd.DataFrame) -> str:
    """One line about a :func:`fetch_photos` report.

    Args:
        report: The report :func:`fetch_photos` returned (or read back from its CSV).

    Returns:
        e.g. ``"412 photos ok (300 cached), 37 dead links, 2 too large, 1 not an image; see
        ./data/airbnb/photos/fetch_report.csv"`` (listings without a URL are added when
        there are any; the path as :func:`cnnlab.config.display_path` shows it).
    """
    counts = report["status"].value_counts() if len(report) else pd.Series(dtype=int)

    def n(status: str) -> int:
        return int(counts.get(status, 0))

    parts = [
        f"{_count(n('ok') + n('cached'), 'photo', 'photos')} ok ({n('cached')} cached)",
        _count(n("dead"), "dead link", "dead links"),
        f"{n('too_large')} too large",
        _count(n("not_image"), "not an image", "not images"),
    ]
    if n("no_url"):
        parts.append(_count(n("no_url"), "listing without a URL", "listings without a URL"))
    where = report.attrs.get("report_path")
    see = display_path(where) if where else REPORT_NAME
    return f"{', '.join(parts)}; see {see}"
