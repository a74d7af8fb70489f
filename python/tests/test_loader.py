"""webssl.Loader against the CLI loader (`webssl shards bench --dump`), resume, skips, the GIL."""

import json
import pathlib
import shutil
import tarfile
import threading

import numpy as np
import pytest

import webssl
from conftest import ok

# Small crops so that a batch costs milliseconds; the recipes are the CLI's.
SMALL = dict(size=56, local_size=28, n_local=2, patch_size=14)
STREAM = dict(seed=5, shuffle_buffer=8, num_workers=2)


def bench_args(shards, recipe, out, batches=2, warmup=1, batch_size=4):
    return [
        "shards", "bench", shards, "--recipe", recipe, "--batch-size", batch_size,
        "--batches", batches, "--warmup", warmup, "--size", SMALL["size"],
        "--local-size", SMALL["local_size"], "--n-local", SMALL["n_local"],
        "--patch", SMALL["patch_size"], "--seed", STREAM["seed"],
        "--shuffle-buffer", STREAM["shuffle_buffer"], "--workers", STREAM["num_workers"],
        "--threads", 2, "--dump", out,
    ]


def cli_batches(dump, n):
    """The CLI's dumped batches as {name: array} dicts with `keys`."""
    dump = pathlib.Path(dump)
    out = []
    for i in range(n):
        batch = {"keys": (dump / f"{i:06}.keys.txt").read_text().splitlines()}
        for f in sorted(dump.glob(f"{i:06}.*.npy")):
            batch[f.name[len(f"{i:06}.") : -len(".npy")]] = np.load(f)
        out.append(batch)
    return out


def assert_same(cli_batch, py_batch):
    arrays = sorted(k for k in cli_batch if k != "keys")
    py_arrays = sorted(k for k, v in py_batch.items() if isinstance(v, np.ndarray))
    assert arrays == py_arrays
    assert cli_batch["keys"] == py_batch["keys"]
    for name in arrays:
        a, b = cli_batch[name], py_batch[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), f"{name} differs"


@pytest.mark.parametrize("recipe", ["dino", "mae", "clip", "eval"])
def test_batches_equal_the_cli_loader_byte_for_byte(cli, shards, tmp_path, recipe):
    ok(cli(*bench_args(shards, recipe, tmp_path)))
    want = cli_batches(tmp_path, 3)
    loader = webssl.Loader(shards, recipe, 4, decode_threads=1, **SMALL, **STREAM)
    got = [next(loader) for _ in range(3)]
    for w, g in zip(want, got):
        assert_same(w, g)
    assert [g["index"] for g in got] == [0, 1, 2]
    if recipe == "dino":
        b = got[0]
        assert b["global"].shape == (2 * 4, 3, 56, 56) and b["local"].shape == (2 * 4, 3, 28, 28)
        assert b["masks"].dtype == np.bool_ and b["masks"].shape == (2 * 4, 16)
    if recipe == "mae":
        assert got[0]["mae_mask"].shape == (4, 16) and got[0]["mae_mask"].sum() == 4 * 12


def test_arrays_own_their_memory_without_copies(shards):
    loader = webssl.Loader(shards, "dino", 4, **SMALL, **STREAM)
    b = next(loader)
    g = b["global"]
    # A view (through the buffer protocol) of the loader's own allocation: contiguous, writable,
    # not owning its data; its base is a memoryview of the native Buffer, exactly this array's bytes.
    assert g.flags["C_CONTIGUOUS"] and g.flags["WRITEABLE"] and not g.flags["OWNDATA"]
    assert isinstance(g.base, memoryview) and type(g.base.obj).__name__ == "Buffer"
    assert g.base.nbytes == g.nbytes and g.base.format == "f"
    assert np.shares_memory(g, np.asarray(g.base))


def test_resume_through_state_dict(shards):
    a = webssl.Loader(shards, "dino", 4, **SMALL, **STREAM)
    next(a)
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON (and so torch.save)
    after = [next(a) for _ in range(3)]
    b = webssl.Loader(shards, "dino", 4, decode_threads=1, **SMALL, **STREAM)
    next(b)
    next(b)  # b is elsewhere; load_state_dict moves it back
    b.load_state_dict(state)
    for want in after:
        got = next(b)
        assert got["index"] == want["index"]
        assert got["keys"] == want["keys"]
        for k, v in want.items():
            if isinstance(v, np.ndarray):
                assert v.tobytes() == got[k].tobytes(), k


def test_state_from_other_settings_is_refused(shards):
    a = webssl.Loader(shards, "dino", 4, **SMALL, **STREAM)
    next(a)
    other = webssl.Loader(shards, "dino", 4, **SMALL, **{**STREAM, "seed": 6})
    with pytest.raises(ValueError, match=r"seed"):
        other.load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match=r"`version`"):
        other.load_state_dict({"version": 99})


def test_rank_split_covers_the_data_once(shards):
    """Two ranks with one shuffle-free epoch each read disjoint halves of the 48 samples."""
    seen = []
    for rank in range(2):
        loader = webssl.Loader(
            shards, "clip", 8, size=56, rank=rank, world_size=2, shuffle_buffer=1, seed=1
        )
        seen.append({k for _ in range(3) for k in next(loader)["keys"]})
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1]) == 48


def corrupt_one_image(src, dst):
    """A copy of `src` whose second shard's first image has its bytes overwritten (same size)."""
    shutil.copytree(src, dst)
    shard = sorted(pathlib.Path(dst).glob("*.tar"))[1]
    with tarfile.open(shard) as t:
        # The image member is `<key>.png` (not `<key>.seg.png` / `<key>.depth.png`).
        m = next(m for m in t.getmembers() if m.name.count(".") == 1 and m.name.endswith(".png"))
    with open(shard, "r+b") as f:
        f.seek(m.offset_data)
        f.write(b"\0" * min(64, m.size))
    return m.name.rsplit(".", 1)[0]


def test_bad_samples_are_skipped_and_counted_as_the_cli(cli, shards, tmp_path):
    bad_key = corrupt_one_image(shards, tmp_path / "bad")
    args = bench_args(tmp_path / "bad", "clip", tmp_path / "dump", batches=11, warmup=1)
    report = json.loads(ok(cli(*args, "--json")))
    loader = webssl.Loader(tmp_path / "bad", "clip", 4, **SMALL, **STREAM)
    keys = [k for _ in range(12) for k in next(loader)["keys"]]
    stats = loader.stats()
    assert bad_key not in keys
    assert stats["samples_skipped"] == report["skipped"] >= 1
    assert stats["skipped"][0]["what"].endswith(bad_key)
    assert "cannot decode" in stats["skipped"][0]["reason"]
    assert report["skipped_first"][0].startswith(stats["skipped"][0]["what"])


def test_errors_carry_the_cli_messages(cli, shards, tmp_path):
    with pytest.raises(ValueError, match="unknown recipe `dinov2`"):
        webssl.Loader(shards, "dinov2")
    with pytest.raises(ValueError) as e:
        webssl.Loader(shards, "mae", size=225)
    stderr = cli("shards", "bench", shards, "--recipe", "mae", "--size", 225).stderr
    assert "225 must be a multiple of the patch size 14" in str(e.value)
    assert "225 must be a multiple of the patch size 14" in stderr
    with pytest.raises(Exception, match="opening shards in") as e:
        webssl.Loader(tmp_path / "missing")
    assert isinstance(e.value, (OSError, webssl.WebsslError))
    with pytest.raises(ValueError, match="batch_size"):
        webssl.Loader(shards, "clip", 0)
    loader = webssl.Loader(shards, "clip", 2, size=56)
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(loader)


def test_the_gil_is_released_while_a_batch_is_made(shards):
    loader = webssl.Loader(shards, "dino", 16, decode_threads=1, shuffle_buffer=8)
    done = threading.Event()
    ticks = 0

    def work():
        next(loader)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():  # runs only while the other thread does not hold the GIL
        ticks += 1
    t.join()
    assert ticks > 1000, ticks
