"""`evoked features export` (npy + parquet, parquet) and the store's named dimensions."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_image
from evoked.cli import main
from evoked.errors import ConfigError
from evoked.extract import extract
from evoked.features.export import export_features
from evoked.features.merge import merge_shards

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """11 colour-feature rows, 2 of them failed, with a label distribution."""
    root = tmp_path_factory.mktemp("exp")
    lines = ["path,category,valence,arousal,split,p_joy,p_fear"]
    for k in range(11):
        name = f"i{k:02d}.jpg"
        if k in (3, 8):
            (root / name).write_bytes(b"broken")
        else:
            make_image(root / name, size=(30, 20), color=(20 * k, 100, 200 - 10 * k), seed=k)
        lines.append(
            f"{name},{'joy' if k % 2 else 'fear'},{1 + k * 0.5},{9 - k * 0.5},train,{k / 10},{1 - k / 10}"
        )
    (root / "m.csv").write_text("\n".join(lines) + "\n")
    out = root / "s.h5"
    extract(f"csv:{root / 'm.csv'}", out, ["color"], device="cpu", batch_size=4, workers=0)
    return out


def _h5(store: Path, *names: str) -> tuple[np.ndarray, np.ndarray, h5py.File]:
    with h5py.File(store) as f:
        ok = f["items/status"][:] == 1
        x = np.concatenate([f["features"][n][:][ok] for n in names], axis=1)
        ids = f["items/id"].asstr()[:][ok]
    return x, ids, ok


def test_npy_export_is_the_h5py_matrix_row_for_row(store: Path, tmp_path: Path):
    out = tmp_path / "npy"
    s = export_features(store, ["color/stats", "color/pad"], out=out, rows_per_file=4)
    x, ids, ok = _h5(store, "color/stats", "color/pad")
    assert s.rows == 9 and s.left_out_failed == 2 and s.left_out_pending == 0
    embs = sorted((out / "img_emb").glob("img_emb_*.npy"))
    metas = sorted((out / "metadata").glob("metadata_*.parquet"))
    assert [p.name for p in embs] == ["img_emb_0.npy", "img_emb_1.npy", "img_emb_2.npy"]
    assert [len(np.load(p)) for p in embs] == [4, 4, 1]
    assert [pq.read_table(p).num_rows for p in metas] == [4, 4, 1]  # row i of one = row i of the other
    np.testing.assert_array_equal(np.concatenate([np.load(p) for p in embs]), x)
    meta = pq.read_table(out / "metadata")
    assert meta.column("id").to_pylist() == ids.tolist()
    assert set(meta.column("status").to_pylist()) == {"ok"}
    assert {"path", "category", "valence", "arousal", "split", "p_joy", "p_fear"} <= set(meta.column_names)
    with h5py.File(store) as f:
        np.testing.assert_array_equal(meta.column("valence").to_numpy(), f["labels/valence"][:][ok])
    desc = json.loads((out / "_export.json").read_text())
    assert desc["columns"] == {"color/stats": [0, 12], "color/pad": [12, 15]}


def test_parquet_export_has_one_list_column_per_feature(store: Path, tmp_path: Path):
    out = tmp_path / "pq"
    assert (
        main(
            ["features", "export", str(store), "--feature", "color", "--format", "parquet"]
            + ["--out", str(out), "--dtype", "float16", "--normalize", "-q"]
        )
        == 0
    )
    t = pq.read_table(out)
    assert t.num_rows == 9
    x, ids, _ = _h5(store, "color/lbp")
    col = t.column("color/lbp").combine_chunks()
    assert pa.types.is_fixed_size_list(col.type) and col.type.list_size == 59
    got = col.flatten().to_numpy().reshape(-1, 59)
    assert got.dtype == np.float16
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    np.testing.assert_array_equal(got, want)
    assert t.column("id").to_pylist() == ids.tolist()


def test_bad_exports_say_what_to_do_and_write_nothing(store: Path, tmp_path: Path, capsys):
    with pytest.raises(ConfigError, match=r"unknown feature 'color/nope'.*available: .*color/stats"):
        export_features(store, ["color/nope"], out=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code = main(["features", "export", str(store), "--feature", "color/stats", "--out", str(full)])
    assert code == 2 and "is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    with pytest.raises(ConfigError, match=r"--rows-per-file 0"):
        export_features(store, ["color/stats"], out=tmp_path / "b", rows_per_file=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_features(store, ["color/stats"], out=empty)  # an empty folder is fine
    assert (empty / "img_emb" / "img_emb_0.npy").is_file()
    assert not list(tmp_path.glob(".*partial*"))


def test_xarray_sees_named_dimensions_also_after_a_merge(store: Path, tmp_path: Path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    ds = xr.open_dataset(store, engine="h5netcdf", group="features/color")
    assert ds["stats"].dims == ("item", "color.stats") and ds.sizes["item"] == 11
    labels = xr.open_dataset(store, engine="h5netcdf", group="labels")
    assert labels["distribution"].dims == ("item", "labels.distribution")
    assert xr.open_dataset(store, engine="h5netcdf", group="items")["status"].dims == ("item",)
    csv = store.parent / "m.csv"
    for i in range(2):
        extract(
            f"csv:{csv}", tmp_path / "m.h5", ["color"], device="cpu", batch_size=4, workers=0, shard=f"{i}/2"
        )
    merged = merge_shards(tmp_path / "m.h5")
    ds = xr.open_dataset(merged, engine="h5netcdf", group="features/color")
    assert ds["pad"].dims == ("item", "color.pad")
    single = xr.open_dataset(store, engine="h5netcdf", group="features/color")
    np.testing.assert_allclose(ds["pad"].values, single["pad"].values, rtol=1e-5)  # shards batch differently
