"""Tests for cnnlab.tabular.airbnb: the course's Madrid CSVs, Inside Airbnb files and photos.

Inputs are real: the course CSVs and vehicle JPEGs of ../shared, an Inside-Airbnb-format file
built from real course rows, and photos served by a local HTTP server (no internet).
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import re
import shutil
import socket
import sys
import threading
import types
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cnnlab.tabular import airbnb
from cnnlab.tabular.airbnb import (
    COLUMNS,
    COURSE_HEADERS,
    TARGET,
    fetch_listings,
    fetch_photos,
    listings_file_name,
    photo_summary,
    read_course_csv,
    read_listings,
)

MADRID_URL = ("https://data.insideairbnb.com/spain/comunidad-de-madrid/madrid/2024-09-13/data/"
              "listings.csv.gz")
SCRAPED = dt.date(2017, 4, 8)
# First rows, plus a shared room (30), a half bath (34), the two missing bathrooms (278, 431)
# and the 0-bathroom listing.
PICKED = [*range(14), 30, 34, 102, 278, 431]


def course_dir(shared_dir: Path) -> Path:
    return shared_dir / "datasets" / "airbnb-madrid"


# ------------------------------------------------------------------------------ course CSVs


def test_columns_follow_the_course_header_order():
    assert len(COLUMNS) == 22 and len(set(COLUMNS)) == 22
    assert TARGET == "price" and TARGET in COLUMNS
    assert list(COURSE_HEADERS.values()) == list(COLUMNS)
    assert COURSE_HEADERS["Entire home/apt"] == "entire_home_apt"


@pytest.mark.shared
def test_read_course_csv_keeps_the_raw_missing_values(shared_dir):
    frame = read_course_csv(course_dir(shared_dir) / "trainAttrX.csv")
    assert frame.shape == (750, 22)
    assert tuple(frame.columns) == COLUMNS
    assert (frame.dtypes == "float64").all()
    missing = frame.isna().sum()
    assert missing["weekly_price"] == 566
    assert missing["monthly_price"] == 567
    assert missing["bathrooms"] == 2
    assert missing["price"] == 0
    raw = pd.read_csv(course_dir(shared_dir) / "trainAttrX.csv", sep=";")
    np.testing.assert_array_equal(frame["price"].to_numpy(), raw["Price"].to_numpy(float))
    assert frame.loc[0, "host_since_in_days"] == 153 and frame.loc[0, "private_room"] == 1

    imputed = read_course_csv(course_dir(shared_dir) / "train_data.csv")
    assert imputed.shape == (750, 22) and not imputed.isna().any().any()
    assert read_course_csv(course_dir(shared_dir) / "testAttrX.csv").shape == (250, 22)


@pytest.mark.shared
def test_read_course_csv_names_the_file_and_the_bad_columns(shared_dir, tmp_path):
    lines = (course_dir(shared_dir) / "trainAttrX.csv").read_text().splitlines()
    bad = tmp_path / "renamed.csv"
    bad.write_text("\n".join([lines[0].replace(";Price;", ";Nightly Price;"), *lines[1:]]))
    with pytest.raises(ValueError) as info:
        read_course_csv(bad)
    message = str(info.value)
    assert str(bad) in message and "'Price'" in message and "'Nightly Price'" in message

    comma = tmp_path / "comma.csv"
    comma.write_text("\n".join(line.replace(";", ",") for line in lines[:5]))
    with pytest.raises(ValueError, match="separated"):
        read_course_csv(comma)

    with pytest.raises(FileNotFoundError, match="airbnb-madrid") as missing:
        read_course_csv(tmp_path / "trainAttrX.csv")
    assert str(tmp_path / "trainAttrX.csv") in str(missing.value)


# ------------------------------------------------------------------- Inside Airbnb listings


def _money(value: float) -> str:
    return "" if pd.isna(value) else f"${value:,.2f}"


def _number(value: float) -> str:
    return "" if pd.isna(value) else f"{value:g}"


def _bathrooms_text(value: float, shared: bool) -> str:
    if pd.isna(value):
        return ""
    if value == 0.5:
        return "Shared half-bath" if shared else "Half-bath"
    kind = "shared " if shared else ""
    return f"{value:g} {kind}bath{'' if value == 1 else 's'}"


def listing_rows(course: pd.DataFrame, modern: bool) -> list[dict[str, str]]:
    """Inside-Airbnb-format rows (all text) for the course rows; new (2020+) or old layout."""
    rows = []
    for i, row in course.iterrows():
        if row["entire_home_apt"] == 1:
            room = "Entire home/apt"
        elif row["private_room"] == 1:
            room = "Private room"
        else:
            room = "Shared room"
        listing = str(1_200_000_000_000_000_000 + i)  # too long for float64: must stay text
        record = {
            "id": listing,
            "listing_url": f"https://www.airbnb.com/rooms/{listing}",
            "last_scraped": SCRAPED.isoformat(),
            "picture_url": f"https://a0.muscache.com/pictures/{listing}.jpg",
            "host_since": (SCRAPED - dt.timedelta(days=int(row["host_since_in_days"])))
            .isoformat(),
            "host_listings_count": _number(row["host_listings_count"]),
            "host_total_listings_count": _number(row["host_total_listings_count"]),
            "room_type": room,
            "accommodates": _number(row["accommodates"]),
            "bedrooms": _number(row["bedrooms"]),
            "beds": _number(row["beds"]),
            "price": _money(row["price"]),
            "availability_365": _number(row["availability_365"]),
            "review_scores_rating": _number(row["review_scores_rating"]),
            "review_scores_accuracy": _number(row["review_scores_accuracy"]),
            "review_scores_cleanliness": _number(row["review_scores_cleanliness"]),
            "review_scores_location": _number(row["review_scores_location"]),
            "calculated_host_listings_count": _number(row["calculated_host_listings_count"]),
        }
        if modern:
            record["bathrooms"] = ""
            record["bathrooms_text"] = _bathrooms_text(row["bathrooms"], room != "Entire home/apt")
        else:
            record["bathrooms"] = _number(row["bathrooms"])
            for name in ("weekly_price", "monthly_price", "security_deposit", "cleaning_fee",
                         "extra_people"):
                record[name] = _money(row[name])
            record["guests_included"] = _number(row["guests_included"])
        rows.append(record)
    return rows


BAD_ROWS = {  # id -> (price text, reason)
    "900000000000000001": ("", "price missing"),
    "900000000000000002": ("$abc", "price '$abc' is not a number"),
    "900000000000000003": ("$0.00", "price 0 is not positive"),
}


def write_listings(path: Path, course: pd.DataFrame, modern: bool) -> Path:
    rows = listing_rows(course, modern)
    for listing, (price, _) in BAD_ROWS.items():
        rows.append({**rows[0], "id": listing, "price": price})
    rows.append({**rows[1], "price": "$999.00"})  # same id as a good row, comes later
    pd.DataFrame(rows).to_csv(path, index=False)  # gzip from the .gz suffix
    return path


@pytest.fixture()
def course_rows(shared_dir) -> pd.DataFrame:
    course = read_course_csv(course_dir(shared_dir) / "trainAttrX.csv").iloc[PICKED]
    assert course["bathrooms"].isin([0.5]).any() and course["bathrooms"].isna().sum() == 2
    assert ((course["entire_home_apt"] == 0) & (course["private_room"] == 0)).any()
    assert (course["monthly_price"] >= 1000).any()  # a thousands separator to parse
    return course.reset_index(drop=True)


@pytest.mark.shared
@pytest.mark.parametrize("modern", [False, True], ids=["2017-layout", "2020-layout"])
def test_read_listings_parses_back_the_course_numbers(course_rows, tmp_path, modern):
    path = write_listings(tmp_path / "listings.csv.gz", course_rows, modern)
    with gzip.open(path, "rt") as handle:  # really gzip, really "$1,234.00" strings
        text = handle.read()
    if not modern:  # a thousands separator, quoted by the CSV writer
        assert re.search(r'"\$\d,\d{3}\.\d{2}"', text)

    rows, left_out = read_listings(path)

    assert rows["id"].tolist() == [str(1_200_000_000_000_000_000 + i)
                                   for i in range(len(course_rows))]
    assert rows["picture_url"].str.startswith("https://a0.muscache.com/").all()
    absent = {"weekly_price", "monthly_price", "security_deposit", "cleaning_fee",
              "extra_people", "guests_included"} if modern else set()
    expected = [name for name in COLUMNS if name not in absent]
    assert list(rows.columns) == ["id", "picture_url", *expected]
    pd.testing.assert_frame_equal(rows[expected], course_rows[expected])

    assert sorted(left_out.columns) == ["id", "reason"]
    reasons = dict(zip(left_out["id"], left_out["reason"]))
    for listing, (_, reason) in BAD_ROWS.items():
        assert reasons[listing] == reason
    assert reasons[rows["id"][1]] == "duplicate id (kept the first row)"
    assert len(left_out) == len(BAD_ROWS) + 1
    assert rows.loc[1, "price"] == course_rows.loc[1, "price"]  # the first row won


@pytest.mark.shared
def test_read_listings_needs_id_and_price(course_rows, tmp_path):
    frame = pd.DataFrame(listing_rows(course_rows.head(3), modern=True)).drop(columns="price")
    path = tmp_path / "no-price.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError) as info:
        read_listings(path)
    assert str(path) in str(info.value) and "'price'" in str(info.value)

    truncated = tmp_path / "cut.csv.gz"
    write_listings(tmp_path / "whole.csv.gz", course_rows, modern=True)
    truncated.write_bytes((tmp_path / "whole.csv.gz").read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.csv.gz"):
        read_listings(truncated)


# -------------------------------------------------------------------------- fetch_listings


def test_listings_file_name_is_unique_per_city_and_date():
    assert listings_file_name(MADRID_URL) == (
        "spain-comunidad-de-madrid-madrid-2024-09-13-listings.csv.gz")
    other = MADRID_URL.replace("2024-09-13", "2017-04-08")
    assert listings_file_name(other) != listings_file_name(MADRID_URL)
    with pytest.raises(ValueError, match="file name"):
        listings_file_name("https://data.insideairbnb.com/")


@pytest.mark.shared
def test_fetch_listings_uses_a_local_file_as_is(shared_dir, tmp_path):
    local = course_dir(shared_dir) / "trainAttrX.csv"
    assert fetch_listings(local, tmp_path / "cache") == local
    assert fetch_listings(str(local), tmp_path / "cache") == local
    assert fetch_listings(local.as_uri(), tmp_path / "cache") == local
    missing = tmp_path / "nowhere" / "listings.csv.gz"
    with pytest.raises(FileNotFoundError) as info:
        fetch_listings(str(missing), tmp_path / "cache")
    assert str(missing) in str(info.value) and "insideairbnb" in str(info.value)
    with pytest.raises(ValueError, match="ftp"):
        fetch_listings("ftp://example.org/listings.csv.gz", tmp_path / "cache")


def _fake_keras(monkeypatch, get_file) -> None:
    module = types.ModuleType("keras")
    module.utils = types.SimpleNamespace(get_file=get_file)
    monkeypatch.setitem(sys.modules, "keras", module)


@pytest.mark.shared
def test_fetch_listings_downloads_once_under_a_unique_name(course_rows, tmp_path, monkeypatch):
    source = write_listings(tmp_path / "source.csv.gz", course_rows, modern=True)
    calls = []

    def get_file(**kwargs):
        calls.append(kwargs)
        target = Path(kwargs["cache_dir"]) / kwargs["cache_subdir"] / kwargs["fname"]
        shutil.copyfile(source, target)
        return str(target)

    _fake_keras(monkeypatch, get_file)
    cache = tmp_path / "cache"  # missing: get_file would fall back to /tmp/.keras
    path = fetch_listings(MADRID_URL, cache)
    assert path == cache / "spain-comunidad-de-madrid-madrid-2024-09-13-listings.csv.gz"
    assert calls == [{"fname": path.name, "origin": MADRID_URL, "cache_dir": str(cache),
                      "cache_subdir": ""}]
    assert len(read_listings(path)[0]) == len(course_rows)

    monkeypatch.setitem(sys.modules, "keras", None)  # importing Keras now raises
    assert fetch_listings(MADRID_URL, cache) == path  # cached: no download, no Keras

    path.write_bytes(source.read_bytes()[:200])  # an interrupted download
    _fake_keras(monkeypatch, get_file)
    assert fetch_listings(MADRID_URL, cache) == path and len(calls) == 2
    assert path.read_bytes() == source.read_bytes()


def test_fetch_listings_failure_names_the_url_and_the_way_out(tmp_path, monkeypatch):
    def get_file(**kwargs):
        raise Exception(f"URL fetch failure on {kwargs['origin']}: 403 -- Forbidden")

    _fake_keras(monkeypatch, get_file)
    with pytest.raises(RuntimeError) as info:
        fetch_listings(MADRID_URL, tmp_path)
    assert MADRID_URL in str(info.value) and "local path" in str(info.value)


# ------------------------------------------------------------------------------ photos


@pytest.fixture()
def photo_server(tmp_path):
    """A local HTTP server over a tmp folder; yields (base URL, folder, requested paths)."""
    served = tmp_path / "served"
    served.mkdir()
    hits: list[str] = []
    lock = threading.Lock()
    failures: dict[str, int] = {}

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with lock:
                hits.append(self.path)
                failures[self.path] = failures.get(self.path, 0) + 1
                count = failures[self.path]
            if self.path.startswith("/flaky/") and count == 1:
                self.send_error(503, "try again")
            elif self.path == "/broken.jpg":
                self.send_error(500, "always broken")
            elif self.path.startswith("/stream/"):  # no Content-Length: read until close
                body = (served / self.path.removeprefix("/stream/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.end_headers()
                self.wfile.write(body)
            else:
                super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served, hits
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.shared
def test_fetch_photos_reports_every_link_and_never_fetches_twice(
        shared_dir, tmp_path, photo_server, monkeypatch):
    monkeypatch.setattr(airbnb, "_BACKOFF_S", 0.01)
    base, served, hits = photo_server
    jpegs = sorted((shared_dir / "datasets" / "vehicles").glob("*/*.jpg"))
    good = jpegs[:3]
    big = max(jpegs, key=lambda path: path.stat().st_size)
    for path in good:
        shutil.copyfile(path, served / path.name)
    (served / "flaky").mkdir()
    shutil.copyfile(jpegs[3], served / "flaky" / "photo.jpg")
    (served / "text.jpg").write_bytes((shared_dir / "README.md").read_bytes()[:2000])
    (served / "cut.jpg").write_bytes(jpegs[4].read_bytes()[: jpegs[4].stat().st_size // 2])
    max_bytes = max(path.stat().st_size for path in served.rglob("*.jpg")) + 1
    shutil.copyfile(big, served / "big.jpg")
    assert big.stat().st_size > max_bytes  # a real JPEG, refused for its size only

    links = {  # id -> (URL, expected status)
        **{f"good{i}": (f"{base}/{path.name}", "ok") for i, path in enumerate(good)},
        "flaky": (f"{base}/flaky/photo.jpg", "ok"),
        "missing": (f"{base}/missing.jpg", "dead"),
        "broken": (f"{base}/broken.jpg", "dead"),
        "refused": (f"http://127.0.0.1:{_closed_port()}/x.jpg", "dead"),
        "big": (f"{base}/big.jpg", "too_large"),
        "bigstream": (f"{base}/stream/big.jpg", "too_large"),
        "text": (f"{base}/text.jpg", "not_image"),
        "cut": (f"{base}/cut.jpg", "not_image"),
        "nourl": ("", "no_url"),
    }
    rows = pd.DataFrame({"id": list(links), "picture_url": [url for url, _ in links.values()]})
    photos = tmp_path / "photos"
    fetch = functools.partial(fetch_photos, rows, photos, timeout=5.0, retries=2,
                              max_bytes=max_bytes, workers=4, progress=False)

    report = fetch()

    assert list(report.columns) == ["id", "picture_url", "status", "error", "path"]
    assert report["id"].tolist() == list(links)
    assert dict(zip(report["id"], report["status"])) == {k: s for k, (_, s) in links.items()}
    errors = dict(zip(report["id"], report["error"]))
    assert "404" in errors["missing"] and "500" in errors["broken"]
    assert "Content-Length" in errors["big"] and "Content-Length" not in errors["bigstream"]
    assert errors["good0"] == "" and errors["nourl"]
    sources = {f"good{i}": path for i, path in enumerate(good)} | {"flaky": jpegs[3]}
    for listing, source in sources.items():
        saved = photos / f"{listing}.jpg"
        assert saved.read_bytes() == source.read_bytes()
        with Image.open(saved) as image:
            image.load()
    assert sorted(path.name for path in photos.iterdir()) == sorted(
        [f"{listing}.jpg" for listing in sources] + ["fetch_report.csv"])  # no *.tmp left
    assert dict(zip(report["id"], report["path"]))["good1"] == "good1.jpg"
    assert dict(zip(report["id"], report["path"]))["big"] == ""
    on_disk = pd.read_csv(photos / "fetch_report.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(on_disk, report, check_dtype=False)
    assert hits.count("/broken.jpg") == 3 and hits.count("/missing.jpg") == 1  # no 404 retry
    assert hits.count("/flaky/photo.jpg") == 2
    summary = photo_summary(report)
    assert summary.startswith("4 photos ok (0 cached), 3 dead links, 2 too large, "
                              "2 not images, 1 listing without a URL; see ")
    assert summary.endswith("fetch_report.csv")

    before = len(hits)
    mtimes = {path.name: path.stat().st_mtime_ns for path in photos.glob("*.jpg")}
    again = fetch()
    assert len(hits) == before  # nothing requested: neither photos nor dead links
    expected = {k: ("cached" if s == "ok" else s) for k, (_, s) in links.items()}
    assert dict(zip(again["id"], again["status"])) == expected
    assert again["error"].tolist() == [("" if s == "ok" else e)
                                       for s, e in zip(report["status"], report["error"])]
    assert {path.name: path.stat().st_mtime_ns for path in photos.glob("*.jpg")} == mtimes
    assert photo_summary(again).startswith("4 photos ok (4 cached), 3 dead links")

    subset = fetch_photos(rows.head(2), photos, progress=False)
    assert len(hits) == before and subset["status"].tolist() == ["cached", "cached"]
    kept = pd.read_csv(photos / "fetch_report.csv", dtype=str, keep_default_na=False)
    assert set(kept["id"]) == set(links)  # earlier rows stay recorded

    retried = fetch(retry_dead=True)
    asked = hits[before:]
    assert sorted(set(asked)) == ["/big.jpg", "/broken.jpg", "/cut.jpg", "/missing.jpg",
                                  "/stream/big.jpg", "/text.jpg"]
    assert dict(zip(retried["id"], retried["status"])) == expected


@pytest.mark.shared
def test_listings_with_photos_train_an_image_model_end_to_end(shared_dir, tmp_path,
                                                             photo_server, project, capsys):
    from cnnlab.config import get_profile
    from cnnlab.tabular.columns import load_split
    from cnnlab.tabular.training import train_mixed

    base, served, hits = photo_server
    course = read_course_csv(course_dir(shared_dir) / "trainAttrX.csv").iloc[:48]
    rows = listing_rows(course.reset_index(drop=True), modern=True)
    houses = shared_dir / "datasets" / "houses" / "Houses Dataset"
    for number, row in enumerate(rows, start=1):  # real photos stand in for the listings'
        if number % 12 == 0:
            row["picture_url"] = f"{base}/gone/{row['id']}.jpg"  # 404
            continue
        shutil.copy(houses / f"{number}_frontal.jpg", served / f"{row['id']}.jpg")
        row["picture_url"] = f"{base}/{row['id']}.jpg"
    listings = tmp_path / "listings.csv.gz"
    pd.DataFrame(rows).to_csv(listings, index=False)

    run = train_mixed("airbnb", listings_url=str(listings), models=("mlp", "transfer"),
                      profile=get_profile("smoke"), weights="local",
                      weights_dir=shared_dir / "weights", dirs=project, verbose=True)
    out = capsys.readouterr().out
    assert "44 photos ok (0 cached), 4 dead links" in out
    assert len(run.data.frame) == 44 and run.spec.rooms == ("photo",)
    assert (run.data.left_out["reason"].str.contains("no usable photo")).sum() == 4
    assert run.info["transfer"]["started from"].startswith("mobilenet_v2 imagenet (local file")
    assert (project.models / "airbnb-transfer" / "model.h5").is_file()
    assert len(run.table("test")) == 4  # median, gbm, mlp, transfer on the same test rows
    requests = len(hits)
    load_split("airbnb", listings_url=str(listings), dirs=project, verbose=False)
    assert len(hits) == requests  # a rerun fetches nothing twice
