"""Mixed data (cnnlab.tabular): loaders, the split, preprocessing, photos, models, metrics."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from cnnlab.tabular import columns, photos
from cnnlab.tabular.columns import ROOMS, get_tabular_spec, load_split, read_houses
from cnnlab.tabular.metrics import regression_metrics
from cnnlab.tabular.preprocessing import (
    TargetScaler,
    drop_target_copies,
    find_target_copies,
    fit_preprocessor,
)

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def houses_dir(shared_dir):
    return shared_dir / "datasets" / "houses"


@pytest.fixture(scope="module")
def airbnb_dir(shared_dir):
    return shared_dir / "datasets" / "airbnb-madrid"


def _few_houses(source, target, count: int = 12):
    """A copy of the first ``count`` houses of the real dataset (info lines and photos)."""
    folder = columns.houses_folder(source)
    target.mkdir(parents=True)
    lines = (folder / columns.HOUSES_INFO).read_text().splitlines()[:count]
    (target / columns.HOUSES_INFO).write_text("\n".join(lines) + "\n")
    for number in range(1, count + 1):
        for room in ROOMS:
            shutil.copy(folder / f"{number}_{room}.jpg", target)
    return target


def test_read_houses_reads_all_535_real_houses_and_their_photos(houses_dir):
    houses, left_out = read_houses(houses_dir)
    assert len(houses) == 535 and left_out.empty
    first = houses.iloc[0]
    assert (first["bedrooms"], first["bathrooms"], first["area"], first["zipcode"],
            first["price"]) == (4, 4, 4053, "85255", 869500)
    assert first["frontal"] == "1_frontal.jpg"
    assert columns._sha256(columns.houses_folder(houses_dir) / columns.HOUSES_INFO) == \
        columns.HOUSES_INFO_SHA256  # the download check accepts the real file


def test_malformed_line_and_missing_photo_are_named(houses_dir, tmp_path):
    folder = _few_houses(houses_dir, tmp_path / "houses")
    lines = (folder / columns.HOUSES_INFO).read_text().splitlines()
    lines[2] = "3 4 lots 85266 889000"
    (folder / columns.HOUSES_INFO).write_text("\n".join(lines) + "\n")
    (folder / "5_kitchen.jpg").unlink()
    houses, left_out = read_houses(folder)
    assert sorted(left_out["house"]) == [3, 5] and len(houses) == 10
    reasons = " ".join(left_out["reason"])
    assert "line 3 '3 4 lots 85266 889000'" in reasons and "5 (kitchen)" in reasons
    with pytest.raises(ValueError, match=r"HousesInfo.txt: line 3 .*fix or delete the line"):
        read_houses(folder, strict=True)
    lines[2] = "3 4 3923 85266 889000"
    (folder / columns.HOUSES_INFO).write_text("\n".join(lines) + "\n")
    with pytest.raises(FileNotFoundError, match=r"5_kitchen.jpg: photo missing for house 5"):
        read_houses(folder, strict=True)
    with pytest.raises(FileNotFoundError, match="no HousesInfo.txt"):
        read_houses(tmp_path)


def test_split_is_written_once_and_reused(houses_dir, project):
    first = load_split("houses", houses_dir, seed=1, dirs=project, verbose=False)
    counts = first.counts()
    assert counts.sum() == 535 and counts["test"] == 134
    second = load_split("houses", houses_dir, seed=99, dirs=project, verbose=False)
    pd.testing.assert_series_equal(first.frame.set_index("id")["split"],
                                   second.frame.set_index("id")["split"])
    # every price quintile reaches the test split
    quintile = pd.qcut(first.frame["price"], 5, labels=False)
    assert quintile[first.frame["split"] == "test"].nunique() == 5


def test_preprocessor_is_fitted_on_training_rows_only(airbnb_dir, project):
    data = load_split("airbnb", airbnb_dir, dirs=project, verbose=False)
    assert data.counts()["test"] == 250  # the course's own test listings
    spec = drop_target_copies(data.spec, find_target_copies(data.rows("train"), data.spec),
                              verbose=False)
    train = data.rows("train")
    fitted = fit_preprocessor(spec, train)
    numeric = fitted.named_transformers_["numeric"]
    imputer, scaler = numeric.steps[0][1], numeric.steps[1][1]
    columns_ = list(spec.numeric)
    np.testing.assert_allclose(imputer.statistics_, train[columns_].median().to_numpy())
    everything = data.frame[columns_].median().to_numpy()
    assert not np.allclose(imputer.statistics_, everything)  # test rows would have moved it
    # Changing every test row changes nothing that was fitted.
    poisoned = data.frame.copy()
    poisoned.loc[poisoned["split"] == "test", columns_] = 1e6
    again = fit_preprocessor(spec, poisoned[poisoned["split"] == "train"])
    np.testing.assert_allclose(again.named_transformers_["numeric"].steps[1][1].mean_,
                               scaler.mean_)


def test_target_copies_are_dropped_with_their_reason(airbnb_dir, project, capsys):
    data = load_split("airbnb", airbnb_dir, dirs=project, verbose=False)
    copies = find_target_copies(data.rows("train"), data.spec)
    assert set(copies) == {"weekly_price", "monthly_price"}
    spec = drop_target_copies(data.spec, copies)
    out = capsys.readouterr().out
    assert "dropped weekly_price: the weekly rate" in out and "dropped monthly_price" in out
    names = fit_preprocessor(spec, data.rows("train")).get_feature_names_out()
    assert not any("weekly" in n or "monthly" in n or n.endswith("__price") for n in names)
    # A column equal to the target up to a factor is caught by its correlation.
    frame = data.rows("train").assign(accommodates=lambda f: f["price"] * 7)
    assert "accommodates" in find_target_copies(frame, data.spec)


def test_photos_are_decoded_once(houses_dir, project, monkeypatch, tmp_path):
    folder = _few_houses(houses_dir, tmp_path / "houses", count=6)
    houses, _ = read_houses(folder)
    data = columns.TabularData(get_tabular_spec("houses"),
                               houses.assign(id=houses["house"].astype(str), split="train"),
                               folder)
    calls = []
    real = photos.load_image
    monkeypatch.setattr(photos, "load_image", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = photos.load_photos(data, 32, project, verbose=False)
    assert len(calls) == 6 * 4 and first["kitchen"].shape == (6, 32, 32, 3)
    assert first["kitchen"].dtype == np.uint8
    second = photos.load_photos(data, 32, project, verbose=False)
    assert len(calls) == 24  # nothing decoded again
    for room in ROOMS:
        np.testing.assert_array_equal(first[room], second[room])
    expected = real(folder / "2_frontal.jpg", 32).astype(np.uint8)  # the inference decode
    np.testing.assert_array_equal(first["frontal"][1], expected)


def test_target_scaler_round_trips_prices():
    prices = np.array([22_000.0, 529_000.0, 5_858_000.0])
    scaler = TargetScaler(prices)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(prices)), prices, rtol=1e-5)
    assert abs(float(scaler.transform(prices).mean())) < 1e-6


def test_regression_metrics_match_their_definitions_and_cover_the_value():
    rng = np.random.default_rng(0)
    truth = rng.lognormal(13, 0.6, 200)
    pred = truth * rng.lognormal(0, 0.3, 200)
    from sklearn import metrics

    row = regression_metrics(truth, pred, n_resamples=300)
    assert row["MAE"] == pytest.approx(metrics.mean_absolute_error(truth, pred))
    assert row["MAPE %"] == pytest.approx(
        100 * metrics.mean_absolute_percentage_error(truth, pred))
    assert row["RMSE"] == pytest.approx(metrics.root_mean_squared_error(truth, pred))
    assert row["R2"] == pytest.approx(metrics.r2_score(truth, pred))
    for name in ("MAE", "RMSE", "R2", "MAPE %"):
        assert row[f"{name} low"] < row[name] < row[f"{name} high"], name
    with pytest.raises(ValueError, match="equally long"):
        regression_metrics(truth, pred[:-1])


@pytest.mark.slow
def test_every_mixed_model_round_trips_and_fusion_beats_the_median(houses_dir, shared_dir,
                                                                    project):
    from cnnlab.config import get_profile
    from cnnlab.deploy.export import load_model
    from cnnlab.tabular.models import MIXED_MODELS
    from cnnlab.tabular.training import train_mixed

    run = train_mixed("houses", houses_dir, profile=get_profile("smoke"), weights="local",
                      weights_dir=shared_dir / "weights", dirs=project, verbose=False)
    assert set(MIXED_MODELS) | {"median", "gbm"} == set(run.predictions)
    test_index = np.flatnonzero(run.data.frame["split"] == "test")[:5]
    rows = run.data.frame.iloc[test_index].assign(
        zipcode=lambda f: f["zipcode"].astype(str))
    tabular = run.preprocessor.transform(rows).astype(np.float32)
    for name in MIXED_MODELS:
        model = load_model(run.paths[name][".h5"])
        inputs = {}
        for tensor in model.inputs:
            key = tensor.name.split(":")[0]
            inputs[key] = tabular if key == "tabular" else \
                run.photos_at(tensor.shape[1])[key][test_index].astype(np.float32)
        predicted = run.scaler.inverse(model.predict(inputs, verbose=0))
        np.testing.assert_allclose(predicted, run.predictions[name]["test"][:5], rtol=1e-3,
                                   err_msg=name)
    assert "mobilenet_v2 imagenet (local file" in run.info["transfer"]["started from"]
    table = run.table("test")
    assert table.loc["fusion", "MAPE %"] < table.loc["median", "MAPE %"]
    assert table.loc["fusion", "MAPE % high"] < table.loc["median", "MAPE % low"]
    # Ordered by validation MAPE: the first row is the model chosen on validation.
    assert table["val MAPE %"].is_monotonic_increasing
    versus = run.compare("median", "fusion")  # paired over the same test houses
    assert versus["difference"] == pytest.approx(
        table.loc["fusion", "MAPE %"] - table.loc["median", "MAPE %"])
    assert versus["high"] < 0 and versus["excludes zero"]
    assert versus["n"] == table.loc["fusion", "n"]


def test_sample_houses_are_generated_offline_in_the_houses_layout(project):
    from cnnlab.data.synthetic import FRONTAL_PRICE_FACTOR
    from cnnlab.tabular.columns import load_split, read_houses

    data = load_split("sample_houses", dirs=project, verbose=False)
    assert len(data.frame) == 240 and set(data.frame["split"]) == {"train", "val", "test"}
    assert data.spec.title.startswith("Synthetic houses") and "SYNTHETIC" in data.spec.note
    folder = project.data / "sample_houses" / "raw"
    houses, left_out = read_houses(folder)
    assert len(houses) == 240 and left_out.empty  # every line and all four photos are there
    before = (folder / "HousesInfo.txt").stat().st_mtime_ns
    load_split("sample_houses", dirs=project, verbose=False)  # generated once, then reread
    assert (folder / "HousesInfo.txt").stat().st_mtime_ns == before
    assert max(FRONTAL_PRICE_FACTOR.values()) / min(FRONTAL_PRICE_FACTOR.values()) == 2.0


def test_cli_trains_one_mixed_model_beside_the_baselines(airbnb_dir, project, capsys):
    from cnnlab.cli import main

    status = main(["mixed", "mlp", "--dataset", "airbnb", "--data-dir", str(airbnb_dir),
                   "--profile", "smoke"])
    assert status == 0
    out = capsys.readouterr().out
    assert "dropped weekly_price" in out
    table = out[out.index("MAPE %"):]
    assert all(name in table for name in ("mlp", "gbm", "median"))
    assert (project.models / "airbnb-mlp" / "model.h5").is_file()
    assert (project.checkpoints / "airbnb-mlp" / "history.csv").is_file()
    assert list((project.checkpoints / "airbnb-mlp" / "tensorboard").rglob("events.out.tfevents.*"))
    assert main(["mixed", "cnn", "--dataset", "airbnb", "--data-dir", str(airbnb_dir),
                 "--profile", "smoke"]) == 0  # no photos: said, not a crash
    assert "skipped cnn: dataset airbnb has no photos" in capsys.readouterr().out


def test_categorical_codes_with_missing_values_and_float_reads_are_one_level():
    spec = get_tabular_spec("houses")
    # The zipcode column is float because one row is missing: 93446.0 is the level 93446.
    train = pd.DataFrame({"bedrooms": [3, 4, 2, 3, 5, 3, 4], "bathrooms": [2.0] * 7,
                          "area": [1500.0, 2000, 900, 1700, 2500, 1600, 1800],
                          "zipcode": [93446.0] * 6 + [np.nan], "price": [1.0] * 7})
    fitted = fit_preprocessor(spec, train)
    names = list(fitted.get_feature_names_out())
    assert "categorical__zipcode_93446" in names
    test = pd.DataFrame({"bedrooms": [3, 3], "bathrooms": [2.0, 2.0], "area": [1500.0, 1500.0],
                         "zipcode": [93446, 10001], "price": [1.0, 1.0]})
    encoded = fitted.transform(test)
    assert encoded[0, names.index("categorical__zipcode_93446")] == 1.0
    assert encoded[1, names.index("categorical__zipcode_93446")] == 0.0  # unseen level
