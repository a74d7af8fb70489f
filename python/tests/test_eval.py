"""embed, vqa_score and synth against the CLI commands they mirror."""

import filecmp
import json
import shutil
import struct
import zlib

import numpy as np
import pytest

import webssl
from conftest import ok


def test_synth_writes_the_cli_shards(cli, tmp_path):
    summary = webssl.synth(tmp_path / "py", 30, size=48, seed=3, shard_size=8, split="val")
    ok(cli("synth", "--out", tmp_path / "cli", "--samples", 30, "--size", 48, "--seed", 3,
           "--shard-size", 8, "--split", "val"))
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "py").iterdir())
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "cli", tmp_path / "py", names, shallow=False)
    assert not mismatch and not errors
    assert summary["samples"] == 30 and summary["shards"] == 4
    with pytest.raises(ValueError, match="size"):
        webssl.synth(tmp_path / "bad", 4, size=8)


def test_embed_equals_the_cli(cli, fixtures, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ["astronaut", "chelsea", "coffee"]:
        shutil.copy(fixtures / "backbones" / "images" / f"{name}.png", imgs)
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    model = fixtures / "backbones" / "dinov2-reg4"
    ok(cli("embed", "--model", model, "--input", imgs, "--output", tmp_path / "f.npy",
           "--features", "cls,patch-mean,registers", "--batch-size", 2, "--last-layers", 1))
    got = webssl.embed(model, [str(imgs)], features=["cls", "patch_mean", "registers"],
                       batch_size=2, last_layers=1)
    assert got["keys"] == (tmp_path / "f.keys.txt").read_text().split()
    assert got["keys"] == ["astronaut", "chelsea", "coffee"]
    assert [w for w, _ in got["skipped"]] == [str(imgs / "broken.jpg")]
    for name in ["cls", "patch_mean", "registers", "layer-1.cls", "layer-1.patch_mean"]:
        want = np.load(tmp_path / f"f.{name}.npy")
        assert got[name].shape == want.shape and got[name].dtype == np.float32, name
        # Same code and batches; only the order of multi-threaded sums may differ (last bits).
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="unknown feature `cls-token`"):
        webssl.embed(model, [str(imgs)], features=["cls-token"])
    with pytest.raises(Exception, match="loading model"):
        webssl.embed(tmp_path / "no-model", [str(imgs)])


def write_png(path, rgb):
    """An 8-bit RGB PNG of `rgb` ([H, W, 3] uint8) with the standard library only (no Pillow in CI)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_embed_of_arrays_equals_embed_of_their_files(fixtures, tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in [(40, 56), (64, 48)]]
    for i, a in enumerate(arrays):
        write_png(tmp_path / f"array-{i}.png", a)
    model = fixtures / "backbones" / "dinov2-reg4"
    from_files = webssl.embed(model, [str(tmp_path)], features=["cls", "patch_tokens"])
    from_arrays = webssl.embed(model, arrays, features=["cls", "patch_tokens"])
    assert from_arrays["keys"] == from_files["keys"] == ["array-0", "array-1"]
    for name in ["cls", "patch_tokens"]:
        np.testing.assert_array_equal(from_arrays[name], from_files[name])
    with pytest.raises(ValueError, match=r"inputs\[0\]: shape \[4, 4\]"):
        webssl.embed(model, [np.zeros((4, 4), np.uint8)])
    with pytest.raises(ValueError, match="not both"):
        webssl.embed(model, [arrays[0], str(tmp_path)])


TEXTVQA = [
    {"question_id": 1, "answers": ["red"] * 10},
    {"question_id": 2, "answers": ["two"] * 4 + ["2"] * 6},
    {"question_id": 3, "answers": ["stop"] * 10},
    {"question_id": 4, "answers": ["coca cola"] * 3 + ["coke"] * 7},
]
PREDICTIONS = [
    {"question_id": 1, "prediction": "Red."},
    {"question_id": 2, "prediction": "2"},
    {"question_id": 4, "prediction": "Coca-Cola"},
    {"question_id": 9, "prediction": "extra"},
]


def test_vqa_score_equals_the_cli(cli, tmp_path):
    ann, preds = tmp_path / "a.json", tmp_path / "p.jsonl"
    ann.write_text(json.dumps(TEXTVQA))
    preds.write_text("".join(json.dumps(p) + "\n" for p in PREDICTIONS))
    ok(cli("eval", "vqa-score", "--benchmark", "textvqa", "--predictions", preds,
           "--annotations", ann, "--output", tmp_path / "r.json"))
    report = webssl.vqa_score("textvqa", preds, ann)
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert 0 < report["score"] < 100
    with pytest.raises(webssl.WebsslError, match="unknown benchmark") as e:
        webssl.vqa_score("textvqa2", preds, ann)
    stderr = cli("eval", "vqa-score", "--benchmark", "textvqa2", "--predictions", preds,
                 "--annotations", ann).stderr
    assert str(e.value).split("unknown benchmark", 1)[1] in stderr
    with pytest.raises(webssl.WebsslError, match="without a prediction"):
        webssl.vqa_score("textvqa", preds, ann, strict=True)
