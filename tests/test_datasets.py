import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from evoked.data import load_dataset
from evoked.data.manifest import Manifest
from evoked.errors import DatasetError, LabelError


def test_folder_per_category(folder_dataset: Path):
    (folder_dataset / "joy" / "readme.txt").write_text("not an image")
    m = load_dataset(f"folder:{folder_dataset}")
    assert len(m) == 12 and m.kind == "folder"
    assert m.category_counts() == {"fear": 6, "joy": 6}
    assert m.ids[0] == "fear/0.jpg" and m.paths[0] == "fear/0.jpg"
    assert m.abspath(0).is_file()
    assert any("readme.txt" in n for n in m.notes)  # reported, not silently skipped
    assert load_dataset(str(folder_dataset)).kind == "folder"  # detected


def test_folder_with_split_level(tmp_path: Path):
    for split in ("train", "val", "test"):
        for cat in ("amusement", "fear"):
            make_image(tmp_path / "fi" / split / cat / f"{split}_{cat}.jpg")
    m = load_dataset(f"fi:{tmp_path / 'fi'}")
    assert m.split_counts() == {"train": 2, "val": 2, "test": 2}
    assert set(m.category) == {"amusement", "fear"}


def test_empty_folder_is_an_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(f"folder:{tmp_path / 'empty'}")


def test_csv_manifest_with_distribution_and_counts(tmp_path: Path):
    make_image(tmp_path / "img" / "a.jpg")
    make_image(tmp_path / "img" / "b.png")
    (tmp_path / "m.csv").write_text(
        "path,label,valence,arousal,split,p_joy,p_fear\nimg/a.jpg,Joy,7.5,5,train,3,1\nimg/b.png,,,,test,,\n"
    )
    m = load_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert list(m.ids) == ["img/a.jpg", "img/b.png"]
    assert list(m.category) == ["joy", ""]
    np.testing.assert_allclose(m.distribution[0], [0.75, 0.25])  # votes normalised
    assert np.isnan(m.distribution[1]).all() and np.isnan(m.valence[1])
    assert m.categories == ("joy", "fear") and m.abspath(1).is_file()


def test_jsonl_manifest(tmp_path: Path):
    rows = [
        {
            "id": "x1",
            "path": "a.jpg",
            "valence": 3.0,
            "arousal": 6.0,
            "distribution": {"joy": 0.2, "fear": 0.8},
        },
        {"id": "x2", "path": "b.jpg", "category": "fear"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    m = load_dataset(str(tmp_path / "m.jsonl"))
    assert m.kind == "jsonl" and list(m.ids) == ["x1", "x2"]
    np.testing.assert_allclose(m.distribution[0], [0.2, 0.8])


@pytest.mark.parametrize(
    "content, error, match",
    [
        ("file_name,valence\na.jpg,3\n", DatasetError, "no path column"),
        ("path,valence\na.jpg,high\n", LabelError, r"m.csv:2: valence 'high' is not a number"),
        ("path,split\na.jpg,holdout\n", LabelError, "unknown split 'holdout'"),
        ("path,id\na.jpg,k\nb.jpg,k\n", DatasetError, "ids occur more than once"),
        ("path,p_joy,p_fear\na.jpg,0.5,\n", LabelError, "partly missing"),
        ("path,p_joy,p_fear\na.jpg,-1,2\n", LabelError, "negative"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path: Path, content, error, match):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(error, match=match):
        load_dataset(f"csv:{tmp_path / 'm.csv'}")


def test_emotion6_layout(tmp_path: Path):
    root = tmp_path / "e6"
    make_image(root / "images" / "joy" / "1.jpg")
    make_image(root / "images" / "fear" / "1.jpg")
    make_image(root / "images" / "fear" / "2.jpg")  # not in ground truth: reported
    (root / "ground_truth.txt").write_text(
        "[image_filename]\t[valence]\t[arousal]\t[a]\t[d]\t[f]\t[j]\t[s]\t[su]\t[n]\n"
        "joy/1.jpg\t8\t4.5\t0\t0\t0\t0.7\t0\t0.3\t0\n"
        "fear/1.jpg\t2.5\t6\t0\t0\t0.9\t0\t0\t0\t0.1\n"
    )
    m = load_dataset(str(root))  # detected
    assert m.kind == "emotion6" and list(m.ids) == ["joy/1.jpg", "fear/1.jpg"]
    assert list(m.category) == ["joy", "fear"] and m.categories[-1] == "neutral"
    np.testing.assert_allclose(m.valence, [8, 2.5])
    assert any("fear/2.jpg" in n for n in m.notes)


def test_ldl_votes_and_split_folders(tmp_path: Path):
    root = tmp_path / "FlickrLDL"
    make_image(root / "train" / "a.jpg")
    make_image(root / "test" / "b.jpg")
    cats = "amusement,awe,contentment,excitement,anger,disgust,fear,sadness"
    (root / "flickrldl_config.csv").write_text(
        f"image,{cats}\na.jpg,5,1,1,1,1,1,1,0\nb.jpg,0,0,0,0,3,3,5,0\n"
    )
    m = load_dataset(f"flickrldl:{root}")
    assert list(m.paths) == ["train/a.jpg", "test/b.jpg"] and list(m.split) == ["train", "test"]
    assert list(m.category) == ["amusement", "fear"]
    np.testing.assert_allclose(m.distribution.sum(1), 1)
    (root / "flickrldl_config.csv").write_text("image,amusement\na.jpg,1\n")
    with pytest.raises(DatasetError, match="no column for category 'awe'"):
        load_dataset(f"ldl:{root / 'flickrldl_config.csv'}")


def test_specs_and_missing_paths(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    with pytest.raises(DatasetError, match="unknown dataset kind 'imagenet'"):
        load_dataset("imagenet:/data")


def test_manifest_csv_round_trip(folder_dataset: Path, tmp_path: Path):
    m = load_dataset(f"folder:{folder_dataset}")
    out = m.to_csv(tmp_path / "elsewhere" / "m.csv")
    back = load_dataset(f"csv:{out}")
    assert list(back.ids) == list(m.ids) and back.name == m.name
    assert back.root == folder_dataset.resolve()  # re-rooted at the images, not the CSV's folder
    assert all(p.is_file() for p in back.abspaths())
    assert list(back.category) == list(m.category)


def test_manifest_subset_and_index(folder_dataset: Path):
    m = load_dataset(f"folder:{folder_dataset}")
    s = m.subset(m.category == "joy")
    assert len(s) == 6 and set(s.category) == {"joy"}
    assert isinstance(s, Manifest)
