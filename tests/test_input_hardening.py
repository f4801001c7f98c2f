"""Inputs at bulk scale and odd files: each test is one numbered case of the second hardening issue
(manifests 1, brace patterns 2, webdataset 14, parquet 15, CSV/JSONL 17). Every file is made here."""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import jpeg_bytes
from evoked.data import load_dataset, load_lexicon
from evoked.data.tabular import used_column
from evoked.data.webdataset import MAX_PATTERN_NAMES, count_braces, expand_braces, image_refs, member_reader
from evoked.errors import DatasetError, LabelError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def add(tf: tarfile.TarFile, name: str, data: bytes, **kw) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in kw.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data))


def shard(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.GNU_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            add(tf, name, data)
    return path


# 1 ---------------------------------------------------------------------------------------------
def test_1_large_manifests_read_whole_and_check_duplicates(tmp_path):
    n = 30_000
    rows = [[f"img/{k:06d}.jpg", "joy" if k % 2 else "fear", 1 + k % 9, 5, "train"] for k in range(n)]
    m = load_dataset(write_csv(tmp_path / "m.csv", ["path", "category", "valence", "arousal", "split"], rows))
    assert len(m) == n and m.ids[-1] == f"img/{n - 1:06d}.jpg" and m.root == tmp_path
    assert m.category_counts() == {"fear": n // 2, "joy": n // 2}
    pq.write_table(
        pa.table({"path": [r[0] for r in rows], "valence": [float(r[2]) for r in rows]}),
        tmp_path / "m.parquet",
    )
    assert len(load_dataset(tmp_path / "m.parquet")) == n
    rows[-1][0] = rows[7][0]  # one duplicate among 30,000 is named
    with pytest.raises(DatasetError, match="1 ids occur more than once.*img/000007.jpg"):
        load_dataset(write_csv(tmp_path / "d.csv", ["path", "category", "valence", "arousal", "split"], rows))


def test_1_absolute_paths_share_a_root_found_in_one_pass(tmp_path):
    a, b = tmp_path / "data" / "a", tmp_path / "data" / "b!x"
    rows = [[str(a / f"{k}.jpg")] for k in range(3)] + [[str(b / "z.jpg")], [str(a / "q" / "1.jpg")]]
    (tmp_path / "lists").mkdir()
    m = load_dataset(write_csv(tmp_path / "lists" / "m.csv", ["path"], rows))
    assert m.root == tmp_path / "data"
    assert m.paths.tolist() == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "b!x/z.jpg", "a/q/1.jpg"]


def test_1_webdataset_listing_of_many_samples(tmp_path):
    jpg = jpeg_bytes()
    members = []
    for k in range(3000):
        members += [(f"{k:06d}.jpg", jpg), (f"{k:06d}.cls", b"joy")]
    shard(tmp_path / "w" / "00000.tar", members)
    m = load_dataset(f"webdataset:{tmp_path}/w/00000.tar")
    assert len(m) == 3000 and m.ids[0] == "00000/000000" and set(m.category) == {"joy"}


# 2 ---------------------------------------------------------------------------------------------
def test_2_brace_patterns_are_counted_before_expanding(tmp_path):
    assert count_braces("wds/{00000..09999999}.tar") == 10_000_000
    assert count_braces("{a,{b,c}}/{0..9}") == len(list(expand_braces("{a,{b,c}}/{0..9}"))) == 40
    assert list(expand_braces("s/{00..02}.tar")) == ["s/00.tar", "s/01.tar", "s/02.tar"]
    (tmp_path / "wds").mkdir()
    for pattern in ("{00000..09999999}.tar", "{0..99999999}.tar"):
        with pytest.raises(DatasetError, match=f"more than {MAX_PATTERN_NAMES:,} shard names.*narrow"):
            load_dataset(f"webdataset:{tmp_path}/wds/{pattern}")
    with pytest.raises(DatasetError, match="matches no file: folder .*nowhere.* does not exist"):
        load_dataset(f"webdataset:{tmp_path}/nowhere/{{000000..999999}}.tar")
    with pytest.raises(DatasetError, match="99999 of its 100000 shards do not exist: .*00001.tar"):
        shard(tmp_path / "wds" / "00000.tar", [("0.jpg", b"x")])
        load_dataset(f"webdataset:{tmp_path}/wds/{{00000..99999}}.tar")


# 14 --------------------------------------------------------------------------------------------
def _raw_member(info: tarfile.TarInfo, fmt: int, data: bytes) -> bytes:
    return info.tobuf(format=fmt) + data + bytes(-len(data) % 512)


@pytest.mark.parametrize("size,fmt", [(2**62, tarfile.GNU_FORMAT), (10**15, tarfile.PAX_FORMAT)])
def test_14_huge_member_sizes_are_a_truncated_shard(tmp_path, size, fmt):
    ok = tarfile.TarInfo("000.jpg")
    ok.size = len(jpeg_bytes())
    big = tarfile.TarInfo("001.jpg")
    big.size = size
    (tmp_path / "00000.tar").write_bytes(
        _raw_member(ok, fmt, jpeg_bytes()) + _raw_member(big, fmt, b"x" * 600)
    )
    m = load_dataset(f"webdataset:{tmp_path}/00000.tar")
    assert m.ids[0] == "00000/000" and any("truncated" in n for n in m.notes)


def test_14_deeply_nested_json_is_a_clear_error(tmp_path):
    shard(tmp_path / "00000.tar", [("0.jpg", jpeg_bytes()), ("0.json", b"[" * 200_000)])
    with pytest.raises(DatasetError, match="0.json: JSON nested too deeply"):
        load_dataset(f"webdataset:{tmp_path}/00000.tar")


def test_14_non_utf8_json_is_a_clear_error(tmp_path):
    shard(
        tmp_path / "00000.tar",
        [("0.jpg", jpeg_bytes()), ("0.json", '{"category": "f\xeate"}'.encode("latin-1"))],
    )
    with pytest.raises(DatasetError, match="0.json: byte ea at offset 15 is not UTF-8.*iconv"):
        load_dataset(f"webdataset:{tmp_path}/00000.tar")


def test_14_a_fifo_shard_is_refused_not_opened(tmp_path):
    os.mkfifo(tmp_path / "00000.tar")
    for spec in ("00000.tar", "*.tar", "{00000..00000}.tar"):
        with pytest.raises(DatasetError, match="not a regular file"):
            load_dataset(f"webdataset:{tmp_path}/{spec}")


def test_14_non_utf8_member_names_keep_their_images(tmp_path):
    shard(tmp_path / "00000.tar", [(os.fsdecode(b"caf\xe9.jpg"), jpeg_bytes()), ("plain.jpg", jpeg_bytes())])
    m = load_dataset(f"webdataset:{tmp_path}/00000.tar")
    assert m.ids.tolist() == ["00000/caf\\xe9", "00000/plain"]
    refs = image_refs(m)  # no "shard changed since the store was made"
    assert all(r.error is None for r in refs)
    read = member_reader(m)
    assert read(str(m.abspath(0))) == jpeg_bytes()


def _ustar_prefix_member(prefix: bytes, name: bytes, data: bytes) -> bytes:
    info = tarfile.TarInfo("x")
    info.size = len(data)
    hdr = bytearray(info.tobuf(format=tarfile.USTAR_FORMAT))
    hdr[0:100] = name.ljust(100, b"\0")
    hdr[345:500] = prefix.ljust(155, b"\0")
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr) + data + bytes(-len(data) % 512)


def test_14_names_that_climb_out_of_the_shard_stay_inside(tmp_path):
    long_climb = "../" * 40 + "deep.jpg"  # over 100 bytes: a pax or GNU long name
    with tarfile.open(tmp_path / "00000.tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("../../../../etc/passwd.jpg", "/abs/olute.jpg", long_climb, "ok/./fine.jpg"):
            add(tf, name, jpeg_bytes())
    with tarfile.open(tmp_path / "00001.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        add(tf, "../" * 40 + "gnu.jpg", jpeg_bytes())
    raw = _ustar_prefix_member(b"../../..", b"prefixed.jpg", jpeg_bytes())
    (tmp_path / "00002.tar").write_bytes(raw + bytes(1024))
    m = load_dataset(f"webdataset:{tmp_path}/{{00000..00002}}.tar")
    assert m.ids.tolist() == [
        "00000/etc/passwd",
        "00000/abs/olute",
        "00000/deep",
        "00000/ok/./fine",
        "00001/gnu",
        "00002/prefixed",
    ]
    assert not any(".." in p or p.startswith("/") for p in m.paths.tolist())
    assert sum("climb out of the shard" in n for n in m.notes) == 3
    read = member_reader(m)
    assert all(read(str(m.abspath(k))) == jpeg_bytes() for k in range(len(m)))


def test_14_hard_links_are_read_through_their_member_with_a_note(tmp_path):
    with tarfile.open(tmp_path / "00000.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        add(tf, "a.jpg", jpeg_bytes())
        add(tf, "b.jpg", b"", type=tarfile.LNKTYPE, linkname="a.jpg")
        add(tf, "c.jpg", b"", type=tarfile.LNKTYPE, linkname="missing.jpg")
        add(tf, "d.jpg", b"", type=tarfile.SYMTYPE, linkname="a.jpg")
    m = load_dataset(f"webdataset:{tmp_path}/00000.tar")
    assert m.ids.tolist() == ["00000/a", "00000/b"]
    assert member_reader(m)(str(m.abspath(1))) == jpeg_bytes()
    notes = " ".join(m.notes)
    assert "1 hard-link member(s) read through the member they name: b.jpg -> a.jpg" in notes
    assert "c.jpg -> missing.jpg" in notes and "d.jpg (symbolic link)" in notes


# 15 --------------------------------------------------------------------------------------------
def test_15_parquet_nul_in_a_path(tmp_path):
    pq.write_table(pa.table({"path": ["a.jpg", "b\0.jpg"]}), tmp_path / "m.parquet")
    with pytest.raises(DatasetError, match="1 path value.*NUL character.*row 2"):
        load_dataset(tmp_path / "m.parquet")


def test_15_parquet_distribution_as_a_list_is_refused(tmp_path):
    pq.write_table(pa.table({"path": ["a.jpg"], "distribution": [[0.3, 0.7]]}), tmp_path / "m.parquet")
    with pytest.raises(
        DatasetError, match="column 'distribution' is list<element: double>.*names its categories"
    ):
        load_dataset(tmp_path / "m.parquet")


def test_15_parquet_reads_only_the_columns_used(tmp_path, monkeypatch):
    blob = "x" * 2_000_000
    pq.write_table(
        pa.table({"path": ["a.jpg", "b.jpg"], "caption": [blob, blob], "valence": [1.0, 2.0]}),
        tmp_path / "m.parquet",
        compression="zstd",
    )
    asked = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        asked.append(kw.get("columns"))
        return real(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    m = load_dataset(tmp_path / "m.parquet")
    assert asked == [["path", "valence"]] and m.valence.tolist() == [1.0, 2.0]
    assert not used_column("caption") and used_column(" P_Joy ") and used_column("Image")


@pytest.mark.parametrize(
    "column,values,match",
    [
        ("path", pa.array([b"img/0.jpg"], pa.binary()), "'path' holds bytes.*cast the column to string"),
        ("path", pa.array([["img/0.jpg"]]), "'path' holds list<element: string>"),
        ("path", pa.array([{"p": "img/0.jpg"}]), "'path' holds struct<p: string>"),
        ("category", pa.array([["joy"]]), "'category' holds list<element: string>.*distribution"),
    ],
)
def test_15_parquet_cells_that_are_not_text_are_refused(tmp_path, column, values, match):
    cols = {"path": pa.array(["img/0.jpg"]), column: values}
    pq.write_table(pa.table(cols), tmp_path / "m.parquet")
    with pytest.raises(DatasetError, match=match):
        load_dataset(tmp_path / "m.parquet")


def test_15_p_column_and_distribution_naming_one_category(tmp_path):
    t = pa.table({"path": ["a.jpg"], "p_joy": [0.2], "distribution": [{"joy": 0.8, "fear": 0.2}]})
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(
        LabelError, match="m.parquet:1: category 'joy' is given twice, as p_joy and in distribution"
    ):
        load_dataset(tmp_path / "m.parquet")


def test_15_parquet_map_distribution_and_integer_ids_still_read(tmp_path):
    dist = pa.array([[("joy", 3.0), ("fear", 1.0)]], pa.map_(pa.string(), pa.float64()))
    pq.write_table(pa.table({"id": [7], "path": ["a.jpg"], "distribution": dist}), tmp_path / "m.parquet")
    m = load_dataset(tmp_path / "m.parquet")
    assert m.ids.tolist() == ["7"] and m.categories == ("joy", "fear")
    assert m.distribution.tolist() == [[0.75, 0.25]]


# 17 --------------------------------------------------------------------------------------------
def test_17_nul_in_a_path_or_a_category(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"path": "a\u0000.jpg"}) + "\n")
    with pytest.raises(DatasetError, match=r"path value.*NUL character.*remove the NUL"):
        load_dataset(tmp_path / "a.jsonl")
    write_csv(tmp_path / "c.csv", ["path", "category"], [["a.jpg", "jo\0y"]])
    with pytest.raises(DatasetError, match=r"1 category value.*NUL character.*'jo\\x00y'"):
        load_dataset(tmp_path / "c.csv")


def test_17_a_cell_over_the_csv_limit(tmp_path):
    write_csv(tmp_path / "m.csv", ["path", "category"], [["a.jpg", "joy"], ["b.jpg", "x" * 200_000]])
    with pytest.raises(
        DatasetError, match=r"m.csv:3: field larger than field limit.*at most 131072 characters"
    ):
        load_dataset(tmp_path / "m.csv")


def test_17_jsonl_nested_deep(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg"}\n{"path": "b.jpg", "x": ' + "[" * 100_000 + "\n")
    with pytest.raises(DatasetError, match=r"m.jsonl:2: JSON nested too deeply"):
        load_dataset(tmp_path / "m.jsonl")


def test_17_a_fold_of_5000_digits(tmp_path):
    write_csv(tmp_path / "m.csv", ["path", "fold"], [["a.jpg", "5" * 5000]])
    with pytest.raises(LabelError, match=r"m.csv:2: fold '5555.*\(5002 chars\) is infinite") as e:
        load_dataset(tmp_path / "m.csv")
    assert len(str(e.value)) < 400
    (tmp_path / "m.jsonl").write_text('{"path": "a.jpg", "fold": ' + "5" * 5000 + "}\n")
    with pytest.raises(DatasetError, match=r"m.jsonl:1: JSON holds a number evoked cannot read"):
        load_dataset(tmp_path / "m.jsonl")


def test_17_lexicon_given_a_folder(tmp_path):
    with pytest.raises(LabelError, match="lexicon .* is a folder; give the lexicon file itself"):
        load_lexicon(str(tmp_path))


def test_17_an_all_zero_distribution_is_refused(tmp_path):
    write_csv(tmp_path / "m.csv", ["path", "p_joy", "p_fear"], [["a.jpg", 1, 3], ["b.jpg", 0, 0]])
    with pytest.raises(
        LabelError, match=r"distribution of 1 item\(s\) is all zeros \(e.g. ids \['b.jpg'\]\)"
    ):
        load_dataset(tmp_path / "m.csv")
    shard(tmp_path / "w" / "0.tar", [("0.jpg", jpeg_bytes()), ("0.json", b'{"distribution": {"joy": 0}}')])
    with pytest.raises(LabelError, match="all zeros"):
        load_dataset(f"webdataset:{tmp_path}/w/0.tar")


def test_17_empty_and_partial_distributions_keep_their_meaning(tmp_path):
    write_csv(tmp_path / "m.csv", ["path", "p_joy", "p_fear"], [["a.jpg", 1, 3], ["b.jpg", "", ""]])
    m = load_dataset(tmp_path / "m.csv")
    assert m.distribution[0].tolist() == [0.25, 0.75] and np.isnan(m.distribution[1]).all()


# 18 --------------------------------------------------------------------------------------------
def _truth(tmp_path: Path, valence=None) -> str:
    rows = [[f"i{k}", f"p{k}.jpg", (valence or {}).get(k, 1 + 0.8 * k), 5 - 0.3 * k] for k in range(10)]
    write_csv(tmp_path / "truth.csv", ["id", "path", "valence", "arousal"], rows)
    return f"csv:{tmp_path / 'truth.csv'}"


def _predictions(tmp_path: Path, values, encoding="utf-8", name="P.csv") -> Path:
    lines = ["id,model,valence_pred,arousal_pred"] + [f"i{k},m,{v},{a}" for k, (v, a) in enumerate(values)]
    path = tmp_path / name
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return path


def _good(k: int) -> tuple[float, float]:
    return 1.1 + 0.8 * k, 5.1 - 0.3 * k


def _score(pred, truth, **kw):
    from evoked.evaluate.report import evaluate_predictions

    return evaluate_predictions([pred], truth, bootstrap=kw.pop("bootstrap", 0), plots=False, **kw)


def test_18_bom_and_latin1_predictions(tmp_path):
    truth = _truth(tmp_path)
    report = _score(_predictions(tmp_path, [_good(k) for k in range(10)], encoding="utf-8-sig"), truth)
    assert report["items"]["n"] == 10 and report["systems"][0]["valence"]["r"] > 0.99
    latin = _predictions(tmp_path, [_good(k) for k in range(10)], name="L.csv")
    latin.write_bytes(latin.read_bytes().replace(b"i3,m", "i3,m\xe9".encode("latin-1")))
    with pytest.raises(
        DatasetError, match=r"L.csv:5: byte e9 .* is not UTF-8; save the predictions file as UTF-8"
    ):
        _score(latin, truth)


def test_18_all_nan_and_partly_nan_predictions(tmp_path):
    truth = _truth(tmp_path)
    with pytest.raises(DatasetError, match=r"model 'm'.*no valence prediction in any of its 10 row\(s\)"):
        _score(_predictions(tmp_path, [("nan", a) for _, a in map(_good, range(10))]), truth)
    values = [_good(k) for k in range(10)]
    values[4] = ("", values[4][1])
    report = _score(_predictions(tmp_path, values), truth)
    assert any("1 row(s) without a valence prediction" in n for n in report["notes"])


@pytest.mark.parametrize("bad", ["inf", "-inf", "1e308", "-1e308"])
def test_18_infinite_and_huge_predictions(tmp_path, bad):
    values = [_good(k) for k in range(10)]
    values[2] = (bad, values[2][1])
    with pytest.raises(
        (DatasetError, LabelError), match=r"(is infinite|far outside the rating scale 1..9 .*'i2' valence=)"
    ):
        _score(_predictions(tmp_path, values), _truth(tmp_path))


def test_18_predictions_on_another_scale_and_truth_of_100(tmp_path):
    x100 = [(v * 100, a * 100) for v, a in map(_good, range(10))]
    with pytest.raises(
        LabelError, match=r"20 prediction\(s\) far outside the rating scale 1..9.*rescale them"
    ):
        _score(_predictions(tmp_path, x100), _truth(tmp_path))
    with pytest.raises(
        LabelError, match=r"--truth truth: 1 rating\(s\) outside the scale 1..9: 'i3' valence=100"
    ):
        _score(_predictions(tmp_path, [_good(k) for k in range(10)]), _truth(tmp_path, {3: 100}))
    report = _score(
        _predictions(tmp_path, x100), _truth(tmp_path, {k: 100 + 80 * k for k in range(10)}), va_range="1,900"
    )
    assert report["items"]["n"] == 10


@pytest.mark.parametrize("b,match", [(-5, "must be a whole number >= 0"), (100_000_000, "at most 100,000")])
def test_18_bootstrap_bounds(tmp_path, capsys, b, match):
    from evoked.cli import main

    pred = _predictions(tmp_path, [_good(k) for k in range(10)])
    args = ["evaluate", "--predictions", str(pred), "--truth", _truth(tmp_path), "--bootstrap", str(b), "-q"]
    assert main([*args, "--no-plots", "--out", str(tmp_path / "r")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# 16 --------------------------------------------------------------------------------------------
def test_16_twenty_thousand_categories_are_stored_as_a_dataset(tmp_path):
    import h5py

    from conftest import make_image
    from evoked.extract import extract
    from evoked.features.export import export_features
    from evoked.features.store import open_store, read_categories

    cats = [f"c{k:05d}" for k in range(20_000)]
    with (tmp_path / "m.jsonl").open("w") as f:
        for i in range(3):
            make_image(tmp_path / f"{i}.jpg", seed=i)
            dist = dict.fromkeys(cats, 0.0) | {cats[i * 7000]: 2.0, cats[-1]: 2.0}
            f.write(json.dumps({"path": f"{i}.jpg", "distribution": dist}) + "\n")
    extract(f"jsonl:{tmp_path / 'm.jsonl'}", tmp_path / "s.h5", ["color"], device="cpu", workers=0)
    with open_store(tmp_path / "s.h5") as s:
        labels = s.labels()
    assert labels["categories"] == cats and labels["distribution"][1, 7000] == 0.5
    export_features(tmp_path / "s.h5", ["color/stats"], format="parquet", out=tmp_path / "x")
    table = pq.read_table(next((tmp_path / "x").glob("*.parquet")), columns=["p_c14000"])
    assert table.column("p_c14000").to_pylist() == [0.0, 0.0, 0.5]
    with h5py.File(tmp_path / "old.h5", "w") as f:  # a store from before: the names in an attribute
        f.create_dataset("labels/distribution", data=np.zeros((1, 2))).attrs["categories"] = ["joy", "fear"]
        assert read_categories(f["labels"]) == ["joy", "fear"]


def test_14_a_fifo_image_is_a_failure_not_a_hang(tmp_path):
    from evoked.data.decode import read_bytes
    from evoked.errors import DecodeError

    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(DecodeError, match="not a regular file"):
        read_bytes(tmp_path / "x.jpg")
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(DecodeError, match="is a directory"):
        read_bytes(tmp_path / "d.jpg")
