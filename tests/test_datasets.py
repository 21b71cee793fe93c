"""The user's own data (pipeline/datasets/): image folders, tables, .npz arrays and a LightningDataModule, each
trained, converted and compared on files written here, with artifacts that take the data as stored."""
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import read_report, run_in_process, tree

DIGITS = {0: "zero", 1: "one", 7: "seven"}


def write_digit_folder(root, mnist_root, per_class: int, split: bool, rgb: bool = False) -> dict:
    """Real MNIST digits as PNG/JPEG files in class folders (DIR/<class>/ or DIR/train|test/<class>/)."""
    from PIL import Image
    from torchvision import datasets

    mnist = datasets.MNIST(str(mnist_root), train=True, download=False)
    written: dict = {}
    counts = dict.fromkeys(DIGITS, 0)
    for image, label in zip(mnist.data.numpy(), mnist.targets.numpy(), strict=True):
        label = int(label)
        if label not in DIGITS or counts[label] >= per_class:
            continue
        index = counts[label]
        part = ("test" if index % 4 == 0 else "train") if split else ""
        folder = root / part / DIGITS[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}.{'png' if index % 2 else 'jpg'}"
        picture = Image.fromarray(image)
        (picture.convert("RGB") if rgb else picture).save(path, quality=95)
        written.setdefault(part, []).append((path, DIGITS[label]))
        counts[label] += 1
    (root / ".DS_Store").write_bytes(b"\x00\x01 not an image")
    (root / ("train" if split else "") / "zero" / "README.txt").write_text("notes, not an image")
    return written


def test_tiff_avif_and_16_bit_images_decode_to_the_pixels_an_app_reads(tmp_path):
    """TIFF (16-bit grey, multi-page) and AVIF go through PIL: 16-bit values are scaled to [0, 255] as
    torchvision scales a 16-bit PNG (PIL's own convert("L") would clip them to 255); a float image has no
    range and is refused naming the file; other files are counted, not read."""
    from PIL import Image

    from pipeline.datasets.image_folder import CorruptImage, ImageFolderData, decode

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 24), dtype=np.uint8)
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    for name in ("a", "b"):
        (tmp_path / "set" / name).mkdir(parents=True)
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "set" / "a" / "wide.tiff")  # PIL mode I;16
    first, second = Image.fromarray(rgb), Image.fromarray(255 - rgb)
    first.save(tmp_path / "set" / "a" / "pages.tif", save_all=True, append_images=[second])
    first.save(tmp_path / "set" / "b" / "pic.avif")
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "set" / "b" / "float.tif")  # mode F
    (tmp_path / "set" / "b" / "photo.heic").write_bytes(b"HEIC needs pillow-heif: not read here")
    (tmp_path / "set" / "b" / ".DS_Store").write_bytes(b"\x00")
    # What notebooks and macOS zips leave beside the data: never images of a class, never a class.
    (tmp_path / "set" / "a" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(grey).save(tmp_path / "set" / "a" / ".ipynb_checkpoints" / "wide-checkpoint.png")
    (tmp_path / "set" / "b" / "._pic.avif").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / "set" / "__MACOSX" / "a").mkdir(parents=True)
    (tmp_path / "set" / "__MACOSX" / "a" / "._wide.tiff").write_bytes(b"\x00\x05\x16\x07 AppleDouble")

    assert np.array_equal(decode(str(tmp_path / "set" / "a" / "wide.tiff"), 1).numpy()[0], grey)
    assert np.array_equal(decode(str(tmp_path / "set" / "a" / "wide.tiff"), 3).numpy(), np.stack([grey] * 3))
    assert np.array_equal(decode(str(tmp_path / "set" / "a" / "pages.tif"), 3).numpy(), rgb.transpose(2, 0, 1))
    avif = decode(str(tmp_path / "set" / "b" / "pic.avif"), 3).numpy().astype(int)  # lossy: against PIL's reading
    with Image.open(tmp_path / "set" / "b" / "pic.avif") as opened:
        assert np.abs(avif - np.asarray(opened.convert("RGB")).transpose(2, 0, 1)).max() <= 2
    with pytest.raises(CorruptImage, match="float.tif: a floating-point image"):
        decode(str(tmp_path / "set" / "b" / "float.tif"), 1)
    data = ImageFolderData(path=str(tmp_path / "set"), image_size=[20, 24], channels=1, skip_corrupt=True,
                           test_fraction=0.34, val_fraction=0.0)
    files = sorted(Path(f).name for items in data.items.values() for f, _ in items)
    assert files == ["float.tif", "pages.tif", "pic.avif", "wide.tiff"]  # float.tif: skipped once decoded
    assert data.classes == ["a", "b"]
    assert data.report()["ignored_files"] == {".heic": 1}


def run_ok(run_dir, *overrides: str) -> dict:
    """The CLI in this process; it must succeed. Returns report.json."""
    outcome = run_in_process(*overrides, run_dir=run_dir)
    assert outcome.code == 0, outcome.output[-3000:]
    return read_report(run_dir)


def raw_pixels(paths, rgb: bool) -> np.ndarray:
    """Images as an app would read them (PIL, not the pipeline): float32 [N, C, H, W] in [0, 255]."""
    from PIL import Image

    arrays = [np.asarray(Image.open(p).convert("RGB" if rgb else "L"), dtype=np.float32) for p in paths]
    stacked = np.stack(arrays)
    return stacked.transpose(0, 3, 1, 2) if rgb else stacked[:, None]


@pytest.mark.tf
@pytest.mark.slow
def test_image_folder_trains_converts_and_its_artifacts_take_raw_pixels(tmp_path, mnist_root):
    folder = tmp_path / "digits"
    written = write_digit_folder(folder, mnist_root, per_class=80, split=True)
    run_dir = tmp_path / "run"
    outcome = run_in_process("model=mnist_cnn", "dataset=image_folder", f"dataset.path={folder}", "export=all",
                             "trainer.max_epochs=4", "dataset.num_workers=1",
                             "dataset.augment=[{_target_: torchvision.transforms.v2.RandomAffine, degrees: 5}]",
                             run_dir=run_dir)
    assert outcome.code == 0, outcome.output[-3000:]
    report = read_report(run_dir)
    data = report["data"]
    assert data["classes"] == ["one", "seven", "zero"]  # sorted folder names; .DS_Store and README.txt ignored
    assert data["inputs"] == [{"name": "input", "shape": [1, 28, 28], "dtype": "float32", "layout": "NCHW",
                               "value_range": [0.0, 255.0]}]
    assert data["images"] == {"train": 162, "val": 18, "test": 60}  # val: 10 % of train/, per class
    assert data["ignored_files"] == {".txt": 1}  # README.txt, counted; the hidden .DS_Store not even that
    assert report["model"]["from_data"] == {"num_classes": 3, "input_shape": [1, 28, 28]}
    assert (run_dir / "labels.txt").read_text().splitlines() == ["one", "seven", "zero"]
    assert report["metrics"]["test_accuracy"] >= 0.9
    assert all(e["in_tolerance"] for e in report["parity"]), report["parity"]
    assert {e["runtime"] for e in report["parity"]} == {"onnxruntime", "keras", "tensorflow", "tflite"}
    # The raw file contents, decoded by PIL, fed to model.onnx and model.tflite: the reported accuracy.
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    paths, names = zip(*written["test"], strict=True)
    labels = np.array([data["classes"].index(n) for n in names])
    pixels = raw_pixels(paths, rgb=False)
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_accuracy = float((session.run(None, {"input": pixels})[0].argmax(1) == labels).mean())
    runner = Interpreter(model_path=str(run_dir / "model.tflite")).get_signature_runner()
    tflite_accuracy = float((runner(input=pixels)["output"].argmax(1) == labels).mean())
    metric = next(e["metric"] for e in report["parity"] if e["runtime"] == "onnxruntime")
    assert onnx_accuracy == pytest.approx(metric, abs=1 / len(labels)) and tflite_accuracy == pytest.approx(metric,
                                                                                                            abs=0.02)
    assert "Data: what the artifacts take" in (run_dir / "report.md").read_text()


def test_image_folder_without_split_folders_is_split_per_class_and_rgb_follows_the_files(tmp_path, mnist_root):
    folder = tmp_path / "digits"
    write_digit_folder(folder, mnist_root, per_class=30, split=False, rgb=True)
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, "model=mnist_mlp", "dataset=image_folder", f"dataset.path={folder}",
                    "dataset.image_size=[20,20]", "dataset.num_workers=0", "trainer.max_epochs=1",
                    "stages=[train,export,check]")
    assert report["data"]["inputs"][0]["shape"] == [3, 20, 20]  # channels from the files, size from the key
    assert report["data"]["images"]["test"] == 18 and report["data"]["images"]["train"] >= 60


@pytest.mark.parametrize("skip", [False, True])
def test_a_corrupt_image_is_named_or_skipped(tmp_path, mnist_root, skip):
    folder = tmp_path / "digits"
    write_digit_folder(folder, mnist_root, per_class=20, split=False)
    broken = folder / "seven" / "broken.png"
    broken.write_bytes((folder / "seven" / "1.png").read_bytes()[:60])  # a truncated PNG
    run_dir = tmp_path / "run"
    before = tree(folder)
    outcome = run_in_process("model=mnist_cnn", "dataset=image_folder", f"dataset.path={folder}",
                             "dataset.num_workers=0", "trainer.max_epochs=1", "stages=[train,export]",
                             f"dataset.skip_corrupt={str(skip).lower()}", run_dir=run_dir)
    assert tree(folder) == before
    assert "Traceback" not in outcome.output
    if skip:
        assert outcome.code == 0, outcome.output[-3000:]
        assert read_report(run_dir)["data"]["skipped_files"] == [str(broken)]
    else:
        assert outcome.code == 1
        assert "broken.png is corrupt or truncated" in outcome.output and "dataset.skip_corrupt=true" in outcome.output


@pytest.mark.parametrize("layout, expected", [
    ("empty_class", "holds no images"),
    ("one_class", "a classifier needs at least two"),
    ("no_classes", "no class sub-folders"),
    ("missing", "is not a folder"),
])
def test_a_bad_image_folder_is_a_clear_error(tmp_path, mnist_root, layout, expected):
    folder = tmp_path / "digits"
    write_digit_folder(folder, mnist_root, per_class=4, split=False)
    if layout == "empty_class":
        (folder / "eight").mkdir()
    elif layout == "one_class":
        for name in ("one", "seven"):
            for file in (folder / name).iterdir():
                file.unlink()
            (folder / name).rmdir()
    elif layout == "no_classes":
        folder = folder / "zero"
        for file in folder.glob("*.txt"):
            file.unlink()
    elif layout == "missing":
        folder = folder / "nope"
    outcome = run_in_process("dataset=image_folder", f"dataset.path={folder}", "stages=[train]",
                             run_dir=tmp_path / "run")
    assert outcome.code == 1 and expected in outcome.output and "Traceback" not in outcome.output


def write_table(path, rows: int = 400, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    species = rng.choice(["setosa", "versicolor", "virginica"], rows)
    centre = {"setosa": (5.0, 3.4, 1.5), "versicolor": (5.9, 2.8, 4.3), "virginica": (6.6, 3.0, 5.5)}
    values = np.array([centre[s] for s in species]) + rng.normal(0, 0.25, (rows, 3))
    frame = pd.DataFrame(values, columns=["sepal_length", "sepal_width", "petal_length"])
    frame.insert(1, "habitat", np.where(species == "setosa", "marsh", rng.choice(["field", "wood"], rows)))
    frame["species"] = species
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
    return frame


@pytest.mark.tf
@pytest.mark.slow
def test_a_csv_with_a_text_label_and_a_text_column_trains_and_its_onnx_takes_the_raw_columns(tmp_path):
    frame = write_table(tmp_path / "flowers.csv")
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, "model=tabular_mlp", "model.output=logits", "dataset=table",
                    f"dataset.path={tmp_path / 'flowers.csv'}", "dataset.target=species", "export=tflite",
                    "trainer.max_epochs=8")
    numeric, categorical = report["data"]["inputs"]
    assert numeric["name"] == "numeric" and numeric["columns"] == ["sepal_length", "sepal_width", "petal_length"]
    assert categorical == {"name": "categorical", "shape": [1], "dtype": "int64", "layout": "NC",
                           "columns": ["habitat"], "categories": {"habitat": ["<unknown>", "field", "marsh", "wood"]}}
    assert report["data"]["classes"] == ["setosa", "versicolor", "virginica"]
    assert report["model"]["from_data"] == {"in_features": 6, "num_classes": 3}  # 3 numbers + 3 one-hot
    assert report["metrics"]["test_accuracy"] >= 0.85
    assert all(e["in_tolerance"] for e in report["parity"]), report["parity"]
    # Every row of the file, as an app has it: raw numbers, category ids from report.json (unknown: 0).
    import onnxruntime as ort

    ids = {v: i for i, v in enumerate(categorical["categories"]["habitat"])}
    feeds = {"numeric": frame[numeric["columns"]].to_numpy(np.float32),
             "categorical": np.array([[ids.get(v, 0)] for v in frame["habitat"]], dtype=np.int64)}
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    predicted = session.run(None, feeds)[0].argmax(1)
    truth = np.array([report["data"]["classes"].index(s) for s in frame["species"]])
    assert (predicted == truth).mean() >= 0.85
    unseen = {"numeric": feeds["numeric"][:2], "categorical": np.zeros((2, 1), dtype=np.int64)}  # unknown habitat
    assert np.isfinite(session.run(None, unseen)[0]).all()


@pytest.mark.slow
def test_a_parquet_regression_table_reports_its_metric_in_the_target_units(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["price"] = 1000 + 200 * x[:, 0] - 50 * x[:, 1] + rng.normal(0, 5, 300)
    frame.to_parquet(tmp_path / "prices.parquet")
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, "model=tabular_mlp", "model.output=value", "dataset=table",
                    f"dataset.path={tmp_path / 'prices.parquet'}", "dataset.target=price",
                    "trainer.max_epochs=30", "stages=[train,export,check,parity]")
    assert report["data"]["task"] == "regression" and report["model"]["from_data"]["num_classes"] == 1
    assert report["metrics"]["test_mae"] < 100  # dollars, against a spread of 200
    scaling = report["data"]["target_scaling"]  # what an app multiplies the artifacts' output back with
    assert scaling["column"] == "price" and abs(scaling["mean"] - 1000) < 30 and 150 < scaling["std"] < 250


def test_a_spreadsheet_export_with_semicolons_and_decimal_commas_reads_as_the_same_numbers(tmp_path):
    """Excel in locales with a decimal comma writes ``5,1;marécage;...`` in Windows-1252: the separator is
    found from the header, the decimal commas from the cells and the encoding from the bytes, to the values the
    UTF-8, comma-separated original holds; report.json ``data.read_as`` says so."""
    from pipeline.datasets.table import TableData

    frame = write_table(tmp_path / "flowers.csv", rows=60)
    frame["habitat"] = frame["habitat"].replace({"marsh": "marécage"})
    frame.to_csv(tmp_path / "flowers.csv", index=False)
    frame.to_csv(tmp_path / "flowers_excel.csv", sep=";", decimal=",", index=False, encoding="cp1252")
    assert "5," in (tmp_path / "flowers_excel.csv").read_text("cp1252").splitlines()[1]  # decimal commas

    def read(name: str, **options):
        data = TableData(path=str(tmp_path / name), target="species", seed=0, **options)
        return data, data.splits

    original, expected = read("flowers.csv")
    excel, splits = read("flowers_excel.csv")
    for split in ("train", "test"):
        for name in ("numeric", "categorical"):
            assert torch.equal(getattr(splits, split)[0][name], getattr(expected, split)[0][name])
        assert torch.equal(getattr(splits, split)[1], getattr(expected, split)[1])
    assert excel.spec().inputs[1].categories == original.spec().inputs[1].categories  # "marécage", decoded
    assert "marécage" in original.spec().inputs[1].categories["habitat"]
    assert excel.report()["read_as"] == {"separator": ";", "decimal": ",", "encoding": "cp1252",
                                         "detected": ["separator", "decimal", "encoding"]}
    assert original.report()["read_as"] == {"separator": ",", "decimal": ".", "encoding": "utf-8", "detected": []}
    frame.to_csv(tmp_path / "flowers_unicode.tsv", sep="\t", index=False, encoding="utf-16")  # Excel's Unicode text
    unicode, splits = read("flowers_unicode.tsv")
    assert torch.equal(splits.test[0]["categorical"], expected.test[0]["categorical"])
    assert unicode.report()["read_as"]["encoding"] == "utf-16"
    # Said explicitly, with the names a command line can carry: the same reading, nothing detected.
    explicit, _ = read("flowers_excel.csv", separator="semicolon", decimal="comma", encoding="windows-1252")
    assert explicit.report()["read_as"] == {"separator": ";", "decimal": ",", "encoding": "cp1252", "detected": []}


def test_an_identifier_column_is_named_as_such(tmp_path, caplog):
    """One category per row (a customer id) is noise as one-hot inputs: the log names the column."""
    from pipeline.datasets.table import TableData

    frame = write_table(tmp_path / "flowers.csv", rows=200)
    frame.insert(0, "flower_id", [f"F{i:04d}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "flowers.csv", index=False)
    with caplog.at_level("WARNING", logger="pipeline.datasets.table"):
        TableData(path=str(tmp_path / "flowers.csv"), target="species", seed=0).splits  # noqa: B018
    named = [r.getMessage() for r in caplog.records if "distinct values" in r.getMessage()]
    assert len(named) == 1 and "'flower_id'" in named[0] and "dataset.features" in named[0]  # habitat: 3 values


@pytest.mark.parametrize("change, override, expected", [
    ("decimal_commas", "dataset.target=species", "holds numbers written with a decimal comma"),
    ("semicolons", "dataset.separator=tab", "Set dataset.separator=semicolon"),
    ("semicolons", "dataset.separator=ab", "is not a field separator"),
    ("semicolons", "dataset.decimal=x", "is not a decimal mark"),
    ("semicolons", "dataset.encoding=klingon", "is not an encoding Python knows"),
    ("utf16", "dataset.encoding=utf-8", "is not text in utf-8"),
    ("grouped", "dataset.target=species", "numbers written with thousands separators ('"),
    ("grouped_semicolons", "dataset.target=species", "numbers written with thousands separators ('"),
])
def test_numbers_in_another_notation_are_never_taken_for_categories(tmp_path, change, override, expected):
    """A quoted "5,1" in a comma-separated file is ambiguous (a decimal comma, or a thousands separator): not
    guessed, and never read as a text category; a wrong separator or mark names the setting."""
    frame = write_table(tmp_path / "flowers.csv", rows=60)
    if change == "decimal_commas":
        frame.to_csv(tmp_path / "flowers.csv", decimal=",", index=False)
    elif change == "utf16":
        frame.to_csv(tmp_path / "flowers.csv", index=False, encoding="utf-16")
    elif change.startswith("grouped"):  # 5,012.3 (quoted in a comma-separated file) or 5.012,3
        frame["sepal_length"] = [f"{v * 1000:,.1f}" for v in frame["sepal_length"]]
        if change == "grouped_semicolons":
            frame["sepal_length"] = frame["sepal_length"].str.translate(str.maketrans(",.", ".,"))
        frame.to_csv(tmp_path / "flowers.csv", index=False, sep=";" if "semicolons" in change else ",")
    else:
        frame.to_csv(tmp_path / "flowers.csv", sep=";", index=False)
    outcome = run_in_process("model=tabular_mlp", "dataset=table", f"dataset.path={tmp_path / 'flowers.csv'}",
                             "dataset.target=species", override, "stages=[train]", run_dir=tmp_path / "run")
    assert outcome.code == 1 and expected in outcome.output and "Traceback" not in outcome.output, outcome.output


def test_a_parquet_date_column_is_refused_as_a_feature_not_fed_as_nanoseconds(tmp_path):
    """A datetime64 column would pass as numbers (nanoseconds since 1970, in float32): named instead."""
    import pandas as pd

    frame = write_table(tmp_path / "flowers.csv", rows=60)
    frame["seen"] = pd.date_range("2024-01-01", periods=len(frame), freq="D")
    frame.to_parquet(tmp_path / "flowers.parquet")
    outcome = run_in_process("model=tabular_mlp", "dataset=table", f"dataset.path={tmp_path / 'flowers.parquet'}",
                             "dataset.target=species", "stages=[train]", run_dir=tmp_path / "run")
    assert outcome.code == 1 and "Column 'seen'" in outcome.stderr and "dates or durations" in outcome.stderr, \
        outcome.output
    assert "dataset.categorical=[seen]" in outcome.stderr


def write_weather(path, rows: int = 500):
    """A table with several targets: three 0/1 flags (multi-label) and two values (regression)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"temp": rng.normal(15, 8, rows), "rain_mm": rng.gamma(1, 3, rows),
                          "wind": rng.normal(20, 6, rows), "region": rng.choice(["north", "south"], rows)})
    frame["cold"] = (frame.temp < 10).astype(int)
    frame["wet"] = (frame.rain_mm > 4).astype(int)
    frame["stormy"] = ((frame.wind > 25) & (frame.rain_mm > 2)).astype(int)
    frame["energy"] = 50 - 2 * frame.temp + rng.normal(0, 1, rows)
    frame["water"] = 3 * frame.rain_mm + rng.normal(0, 1, rows)
    frame.to_csv(path, index=False)


@pytest.mark.parametrize("targets, output", [("[cold,wet,stormy]", "multi_label"), ("[energy,water]", "value")])
def test_several_target_columns_of_a_table_train_one_output_each(tmp_path, targets, output):
    """dataset.target=[a,b,c]: 0/1 columns are a multi-label classification (the columns are the classes),
    numeric ones a regression with one output per column, each scaled on its own and reported in its units."""
    write_weather(tmp_path / "weather.csv")
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, "model=tabular_mlp", f"model.output={output}", "dataset=table",
                    f"dataset.path={tmp_path / 'weather.csv'}", f"dataset.target={targets}",
                    "dataset.features=[temp,rain_mm,wind,region]", "trainer.max_epochs=20",
                    "stages=[train,export,check,parity]")
    data, metrics = report["data"], report["metrics"]
    assert report["model"]["from_data"]["num_classes"] == len(targets.split(","))
    assert all(e["in_tolerance"] for e in report["parity"]), report["parity"]
    if output == "multi_label":
        assert data["task"] == "multi_label" and data["classes"] == ["cold", "wet", "stormy"]
        assert metrics["test_accuracy"] >= 0.9 and metrics["test_f1_micro"] >= 0.8, metrics
    else:
        assert data["task"] == "regression" and data["target_shape"] == [2]
        assert data["target_scaling"]["columns"] == ["energy", "water"]
        assert metrics["test_mae"] < 3, metrics  # in the targets' units: noise of 1, spreads of 16 and 9
        assert (run_dir / "predicted_vs_actual.png").is_file()
        assert "`water` = `output[:, 1] *" in (run_dir / "report.md").read_text()


@pytest.mark.parametrize("targets, expected", [
    ("[cold,region]", "neither all 0/1 flags"),
    ("[cold,cold]", "names a column twice"),
    ("[cold,nope]", "dataset.target='nope' is not a column"),
])
def test_several_target_columns_must_be_of_one_kind(tmp_path, targets, expected):
    write_weather(tmp_path / "weather.csv", rows=60)
    outcome = run_in_process("model=tabular_mlp", "dataset=table", f"dataset.path={tmp_path / 'weather.csv'}",
                             f"dataset.target={targets}", "stages=[train]", run_dir=tmp_path / "run")
    assert outcome.code == 1 and expected in outcome.output and "Traceback" not in outcome.output, outcome.output


@pytest.mark.parametrize("change, override, expected", [
    (None, "dataset.target=colour", "dataset.target='colour' is not a column"),
    ("one_class", "dataset.target=species", "has one value ('setosa')"),
    ("mixed", "dataset.target=species", "Column 'sepal_width' of"),
    ("missing", "dataset.target=species", "missing value(s): line 4"),
])
def test_a_bad_table_is_a_clear_error_naming_the_column(tmp_path, change, override, expected):
    frame = write_table(tmp_path / "flowers.csv", rows=60)
    if change == "one_class":
        frame["species"] = "setosa"
    elif change == "mixed":
        frame["sepal_width"] = frame["sepal_width"].astype(object)
        frame.loc[5, "sepal_width"] = "wide"
    elif change == "missing":
        frame.loc[2, "petal_length"] = np.nan
    frame.to_csv(tmp_path / "flowers.csv", index=False)
    outcome = run_in_process("model=tabular_mlp", "dataset=table", f"dataset.path={tmp_path / 'flowers.csv'}",
                             override, run_dir=tmp_path / "run")
    assert outcome.code == 1 and expected in outcome.output and "Traceback" not in outcome.output, outcome.output


def test_several_regression_values_per_sample_train_one_output_each(tmp_path):
    """y [N, 3] floats in an .npz: the network follows the data with 3 outputs (num_classes=3), trains on all
    three, and report.json says the target's shape; a network with another width is refused before training."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.stack([x[:, 0] + x[:, 1], 2 * x[:, 2], -x[:, 3]], axis=1).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    common = ("model=tabular_mlp", "model.output=value", "dataset=arrays", f"dataset.path={tmp_path / 'data.npz'}")
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, *common, "trainer.max_epochs=20", "stages=[train,export,check,parity]")
    assert report["model"]["from_data"]["num_classes"] == 3 and report["data"]["target_shape"] == [3]
    assert report["metrics"]["test_mse"] < 0.5  # targets of variance 2-4: learnt, not the mean
    assert all(e["in_tolerance"] for e in report["parity"]), report["parity"]
    assert (run_dir / "predicted_vs_actual.png").is_file() and not (run_dir / "forecast.png").exists()
    outcome = run_in_process(*common, "model.net.num_classes=1", "stages=[train]", run_dir=tmp_path / "narrow")
    assert outcome.code == 1 and "needs [3] per sample" in outcome.output and "Traceback" not in outcome.output


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_multi_label_targets_train_one_logit_per_class(tmp_path, dtype):
    """y [N, 4] of 0/1 (integers or floats): model.output=multi_label trains a logit per class (binary
    cross-entropy), reports accuracy per label, exact match and micro F1, and names the classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] > 0.5, (x[:, 2] + x[:, 3]) > 0, x[:, 4] < -0.5], axis=1).astype(dtype)
    np.savez(tmp_path / "tags.npz", x=x, y=y)
    common = ("model=tabular_mlp", "model.output=multi_label", "dataset=arrays",
              f"dataset.path={tmp_path / 'tags.npz'}")
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, *common, "dataset.classes=[a,b,c,d]", "trainer.max_epochs=15",
                    "stages=[train,export,check,parity]")
    assert report["data"]["task"] == "multi_label" and report["data"]["classes"] == ["a", "b", "c", "d"]
    assert report["model"]["from_data"]["num_classes"] == 4
    metrics = report["metrics"]
    assert metrics["test_accuracy"] >= 0.9 and metrics["test_f1_micro"] >= 0.85, metrics
    assert 0.5 <= metrics["test_exact_match"] <= metrics["test_accuracy"], metrics
    assert all(e["in_tolerance"] and e["top1_agreement"] == 1.0 for e in report["parity"]), report["parity"]
    assert (run_dir / "labels.txt").read_text().split() == ["a", "b", "c", "d"]


@pytest.mark.parametrize("y, expected", [
    (np.arange(60) % 3, "needs targets of 0/1 per class"),  # one class per sample
    (np.stack([np.arange(60) % 5] * 3, axis=1), "with values from 0 to 4"),  # 3 columns, not 0/1
])
def test_multi_label_refuses_targets_that_are_not_flags(tmp_path, y, expected):
    np.savez(tmp_path / "data.npz", x=np.zeros((60, 4), np.float32), y=y)
    outcome = run_in_process("model=tabular_mlp", "model.output=multi_label", "dataset=arrays",
                             f"dataset.path={tmp_path / 'data.npz'}", "stages=[train]", run_dir=tmp_path / "run")
    assert outcome.code == 1 and expected in outcome.output and "Traceback" not in outcome.output, outcome.output


@pytest.mark.parametrize("output", ["logits", "value"])
def test_flags_per_class_with_a_single_label_output_name_multi_label(tmp_path, output):
    np.savez(tmp_path / "data.npz", x=np.zeros((60, 4), np.float32), y=np.eye(3, dtype=np.int64)[np.arange(60) % 3])
    outcome = run_in_process("model=tabular_mlp", f"model.output={output}", "dataset=arrays",
                             f"dataset.path={tmp_path / 'data.npz'}", "stages=[train]", run_dir=tmp_path / "run")
    assert outcome.code == 1 and "multi_label" in outcome.stderr and "Traceback" not in outcome.output, outcome.output


class StepSegmenter(torch.nn.Module):
    """Class scores per time step: [N, C, T] on targets [N, T]."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv1d(in_channels, num_classes, 5, padding=2)

    def forward(self, x):
        return self.conv(x)


def test_a_binary_mask_per_time_step_is_two_classes_for_a_single_label_output(tmp_path):
    """y [N, T] of 0/1 reads as flags per class only for model.output=multi_label: with logits [N, 2, T] it is
    two classes at every step, and the network follows the data with num_classes=2 (not T)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 1, 24)).astype(np.float32)
    np.savez(tmp_path / "steps.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    report = run_ok(tmp_path / "run", "model.net._target_=tests.test_datasets.StepSegmenter", "model.output=logits",
                    "dataset=arrays", f"dataset.path={tmp_path / 'steps.npz'}", "dataset.batch_size=16",
                    "trainer.max_epochs=30", "stages=[train]")
    assert report["model"]["from_data"]["num_classes"] == 2
    assert report["data"]["task"] == "classification" and report["data"]["classes"] == ["0", "1"]
    assert report["metrics"]["test_accuracy"] >= 0.85  # per step; chance is 0.5


class BatchNormMlp(torch.nn.Module):
    def __init__(self, in_features: int = 4, num_classes: int = 2):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(in_features, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, num_classes))

    def forward(self, x):
        return self.net(x)


def test_a_training_split_that_ends_in_a_batch_of_one_trains_a_batchnorm_network(tmp_path):
    """BatchNorm cannot train on one sample ("Expected more than 1 value per channel"): a last training batch
    of one sample is left out (another one each epoch: the order is shuffled), never a crash mid-epoch."""
    from pipeline.datasets.arrays import ArraysData

    rng = np.random.default_rng(0)
    x = rng.normal(size=(92, 4)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    train_rows = len(ArraysData(path=str(tmp_path / "data.npz"), seed=42).splits.train[1])
    batch_size = train_rows - 1  # batches of train_rows - 1 and 1
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, "model.net._target_=tests.test_datasets.BatchNormMlp", "model.output=logits",
                    "dataset=arrays", f"dataset.path={tmp_path / 'data.npz'}", f"dataset.batch_size={batch_size}",
                    "trainer.max_epochs=2", "stages=[train]")
    assert report["trainer"]["global_step"] == 2  # one batch per epoch: the lone sample was left out


@pytest.mark.tf
def test_npz_arrays_train_with_class_names_and_a_pickled_file_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    run_dir = tmp_path / "run"
    report = run_ok(run_dir, "model=tabular_mlp", "model.output=logits", "dataset=arrays",
                    f"dataset.path={tmp_path / 'data.npz'}", "dataset.classes=[low,high]",
                    "trainer.max_epochs=5", "export=tflite")
    assert report["data"]["classes"] == ["low", "high"] and report["model"]["from_data"]["in_features"] == 8
    assert report["metrics"]["test_accuracy"] >= 0.9
    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.zeros(4))
    outcome = run_in_process("model=tabular_mlp", "dataset=arrays", f"dataset.path={tmp_path / 'objects.npz'}",
                             run_dir=tmp_path / "run2")
    assert outcome.code == 1 and "never unpickled" in outcome.output and "Traceback" not in outcome.output
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")  # a table given as arrays: not called a pickle
    outcome = run_in_process("model=tabular_mlp", "dataset=arrays", f"dataset.path={tmp_path / 'table.csv'}",
                             run_dir=tmp_path / "run3")
    assert outcome.code == 1 and "not a .npz archive" in outcome.output and "dataset=table" in outcome.output


def test_a_datamodule_without_its_class_names_the_key(tmp_path):
    outcome = run_in_process("dataset=datamodule", "stages=[train]", run_dir=tmp_path / "run")
    assert outcome.code == 1 and "dataset._target_ is not set" in outcome.output and "Traceback" not in outcome.output


DATAMODULE = '''
import torch
import pytorch_lightning as pl
from torch.utils.data import DataLoader, TensorDataset


class BlobsModule(pl.LightningDataModule):
    """Two Gaussian blobs in 6-D, as a user's own DataModule would give them."""

    classes = ["left", "right"]

    def __init__(self, samples: int = 600, batch_size: int = 32):
        super().__init__()
        self.samples, self.batch_size = samples, batch_size

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 2, (self.samples,), generator=g)
        x = torch.randn(self.samples, 6, generator=g) + (y[:, None] * 2.0 - 1.0)
        self.train_set = TensorDataset(x[:400], y[:400])
        self.test_set = TensorDataset(x[400:], y[400:])

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.batch_size)

    transferred = 0  # batches that went through the module's own hook

    def on_after_batch_transfer(self, batch, dataloader_idx):
        type(self).transferred += 1
        return batch
'''


@pytest.mark.tf
def test_a_users_own_datamodule_trains_and_feeds_parity(tmp_path, monkeypatch):
    (tmp_path / "user_blobs.py").write_text(textwrap.dedent(DATAMODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    outcome = run_in_process("model=tabular_mlp", "model.output=logits", "dataset=datamodule",
                             "dataset._target_=user_blobs.BlobsModule", "+dataset.samples=600",
                             "trainer.max_epochs=3", "export=keras", run_dir=run_dir)
    module = sys.modules.pop("user_blobs", None)
    assert outcome.code == 0, outcome.output[-3000:]
    assert module.BlobsModule.transferred > 0  # Lightning ran the module's own batch hooks
    report = read_report(run_dir)
    assert report["data"]["classes"] == ["left", "right"]
    assert report["model"]["from_data"] == {"in_features": 6, "num_classes": 2}
    assert report["reference"]["samples"] == 200 and report["metrics"]["test_accuracy"] >= 0.9
    assert all(e["in_tolerance"] for e in report["parity"])
    assert json.loads((run_dir / "report.json").read_text())["data"]["inputs"][0]["shape"] == [6]
