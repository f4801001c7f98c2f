"""The data layer under odd files: each test is one numbered case of the hardening issue (6, 10-12)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from conftest import make_image
from evoked.cli import main
from evoked.data import load_dataset, load_lexicon
from evoked.data.decode import DRAFT_ABOVE_PIXELS, decode_rgb, probe
from evoked.data.manifest import escape_name, unescape_name
from evoked.errors import DatasetError, DecodeError, LabelError
from evoked.extract import extract
from evoked.features.store import FAILED, OK, open_store
from evoked.serve.app import ServeConfig, create_app


def png(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 100, 50)).save(buf, "JPEG", quality=40)
    return buf.getvalue()


# 6 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(4000, 1), (1, 4000), (30000, 1), (1020, 20)])
def test_6_thin_images_are_refused_before_decoding(size):
    data = png(size)
    for fn in (decode_rgb, probe):  # probe: the header-only path of the device decoder
        with pytest.raises(DecodeError, match=r"aspect ratio above 50:1"):
            fn(data, "thin.png")


def test_6_wide_but_usable_images_still_decode():
    assert decode_rgb(png((1000, 20)), "pano.png").shape == (20, 1000, 3)


def test_6_huge_jpegs_decode_at_reduced_scale():
    w, h = 6000, 5000  # 30 MP, above the draft threshold: libjpeg decodes it at 1/2
    assert w * h > DRAFT_ABOVE_PIXELS
    assert decode_rgb(jpeg((w, h)), "big.jpg").shape == (2500, 3000, 3)
    assert decode_rgb(jpeg((4000, 3000)), "photo.jpg").shape == (3000, 4000, 3)  # 12 MP: untouched


def test_6_extract_records_thin_images_as_failures(tmp_path):
    make_image(tmp_path / "imgs" / "a" / "ok.jpg")
    (tmp_path / "imgs" / "a" / "thin.png").write_bytes(png((4000, 1)))
    s = extract(f"folder:{tmp_path / 'imgs'}", tmp_path / "s.h5", ["color"], device="cpu", workers=0)
    assert s.ok == 1 and s.failed == 1
    with open_store(tmp_path / "s.h5") as store:
        assert "aspect ratio" in store.errors()["a/thin.png"]


# 10 --------------------------------------------------------------------------------------------
def test_10_non_utf8_file_names_become_reversible_ids(tmp_path, capsys):
    raw = os.fsdecode(b"caf\xe9.jpg")  # a Latin-1 name on a UTF-8 system: a lone surrogate in Python
    make_image(tmp_path / "imgs" / "a" / raw)
    make_image(tmp_path / "imgs" / "a" / "plain.jpg", seed=1)
    m = load_dataset(f"folder:{tmp_path / 'imgs'}")
    assert sorted(m.ids) == ["a/caf\\xe9.jpg", "a/plain.jpg"]
    assert any("not valid UTF-8" in n for n in m.notes)
    assert all(p.is_file() for p in m.abspaths())
    assert unescape_name(escape_name(raw)) == raw and escape_name("café.jpg") == "café.jpg"
    s = extract(m, tmp_path / "s.h5", ["color"], device="cpu", workers=0)
    assert s.ok == 2 and s.failed == 0
    with open_store(tmp_path / "s.h5") as store:
        assert (store.status == OK).all() and "a/caf\\xe9.jpg" in store.ids
        row = list(store.ids).index("a/caf\\xe9.jpg")
    served = TestClient(
        create_app(ServeConfig(str(tmp_path / "s.h5"), "color/hsv_hist")), base_url="http://127.0.0.1"
    )
    assert served.get(f"/api/image/{row}").content == (tmp_path / "imgs" / "a" / raw).read_bytes()
    assert main(["data", "inspect", f"folder:{tmp_path / 'imgs'}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 2 and report["failures"] == []


# 11 --------------------------------------------------------------------------------------------
def test_11_latin1_manifest_names_file_and_line(tmp_path):
    (tmp_path / "m.csv").write_bytes("path,category\na.jpg,joy\ncafé.jpg,joy\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"m\.csv:3: byte e9 .* is not UTF-8; save the manifest as UTF-8"):
        load_dataset(f"csv:{tmp_path / 'm.csv'}")
    (tmp_path / "m.jsonl").write_bytes('{"path": "caf\xe9.jpg"}\n'.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"m\.jsonl:1: .* not UTF-8"):
        load_dataset(f"jsonl:{tmp_path / 'm.jsonl'}")


def test_11_lexicon_row_without_arousal(tmp_path):
    (tmp_path / "lex.csv").write_text("word,valence,arousal\njoy,8,6\nfear,2.0\n")
    with pytest.raises(LabelError, match=r"lex\.csv:3: no arousal value"):
        load_lexicon(str(tmp_path / "lex.csv"))
    (tmp_path / "lat.csv").write_bytes("word,valence,arousal\nf\xeate,8,6\n".encode("latin-1"))
    with pytest.raises(LabelError, match=r"lat\.csv:2: .* not UTF-8"):
        load_lexicon(str(tmp_path / "lat.csv"))


def test_11_split_of_a_tiny_folder_is_a_message(tmp_path, capsys):
    make_image(tmp_path / "imgs" / "a" / "0.jpg")
    make_image(tmp_path / "imgs" / "a" / "1.jpg")
    rc = main(["data", "split", f"folder:{tmp_path / 'imgs'}", "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot split 2 items" in err and "--ratios" in err and "Traceback" not in err


# 12 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ("path,fold\na.jpg,1.7\n", r"m\.csv:2: fold '1\.7' must be a whole number >= 0"),
        ("path,fold\na.jpg,-5\n", r"m\.csv:2: fold '-5' must be a whole number >= 0"),
        ("path,valence,arousal\na.jpg,5,5\nb.jpg,5\n", r"m\.csv:3: 2 fields, the header has 3"),
    ],
)
def test_12_bad_rows_are_errors_naming_the_row(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises((DatasetError, LabelError), match=message):
        load_dataset(f"csv:{tmp_path / 'm.csv'}")


def test_12_fold_values_that_are_fine(tmp_path):
    (tmp_path / "m.csv").write_text("path,fold\na.jpg,2\nb.jpg,\nc.jpg,3.0\n")
    assert load_dataset(f"csv:{tmp_path / 'm.csv'}").fold.tolist() == [2, -1, 3]


def test_12_jsonl_distribution_that_is_not_an_object(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        '{"path": "a.jpg", "distribution": {"joy": 1}}\n{"path": "b.jpg", "distribution": "lots"}\n'
    )
    with pytest.raises(LabelError, match=r"m\.jsonl:2: distribution 'lots' is not an object"):
        load_dataset(f"jsonl:{tmp_path / 'm.jsonl'}")


def test_12_a_lexicon_word_given_twice(tmp_path):
    (tmp_path / "lex.csv").write_text("word,valence,arousal\njoy,8,6\nfear,2,7\nJoy,3,3\n")
    with pytest.raises(LabelError, match=r"lex\.csv:4: word 'joy' is given a second time"):
        load_lexicon(str(tmp_path / "lex.csv"))
    (tmp_path / "nrc.txt").write_text("joy\t0.9\t0.6\t0.5\njoy\t0.1\t0.6\t0.5\n")
    with pytest.raises(LabelError, match=r"nrc\.txt:2: word 'joy' is given a second time"):
        load_lexicon(str(tmp_path / "nrc.txt"))


def test_12_failed_status_is_recorded_not_dropped(tmp_path):
    """The store keeps every manifest row: a bad one is a failure with its reason, never a gap."""
    make_image(tmp_path / "imgs" / "a" / "ok.jpg")
    (tmp_path / "imgs" / "a" / "page.jpg").write_bytes(b"<html></html>")
    extract(f"folder:{tmp_path / 'imgs'}", tmp_path / "s.h5", ["color"], device="cpu", workers=0)
    with open_store(tmp_path / "s.h5") as store:
        assert len(store) == 2 and sorted(store.status.tolist()) == [OK, FAILED]
        x = store.read("color/hsv_hist")
        assert np.isnan(x[store.status == FAILED]).all()
