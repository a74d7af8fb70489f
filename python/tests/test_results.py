"""read_run against a real (tiny) `webssl pretrain dino` run of the CLI."""

import json

import pytest

import webssl
from conftest import ok

TINY = """seed = 1
[data]
train = "{d}/data"
batch_size = 4
synth = {{ samples = 32, size = 48, seed = 2 }}
[model]
arch = "vit-tiny"
embed_dim = 32
depth = 2
num_heads = 2
[crops]
global_size = 42
local_size = 14
n_local = 2
[heads]
dino_prototypes = 64
ibot_prototypes = 64
hidden_dim = 32
dino_bottleneck_dim = 16
ibot_bottleneck_dim = 16
[optim]
total_steps = 2
warmup_steps = 1
lr_per_1024 = 0.05
[run]
dir = "{d}/run"
tensorboard = false
[eval]
knn_train = "{d}/knn-train"
knn_val = "{d}/knn-val"
knn_train_synth = {{ samples = 24, size = 48, seed = 101, mix = "full" }}
knn_val_synth = {{ samples = 12, size = 48, seed = 102, mix = "full" }}
"""


def test_read_run_reads_what_pretrain_wrote(cli, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(d=tmp_path.as_posix()))
    ok(cli("pretrain", "dino", "--config", config))
    run = webssl.read_run(tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert run["metrics"] == [json.loads(line) for line in lines] and len(lines) == 2
    assert [row["step"] for row in run["metrics"]] == [1, 2]
    assert run["eval"]["knn"] == json.loads((tmp_path / "run" / "eval" / "knn.json").read_text())
    assert "total_steps = 2" in run["config"] and len(run["timing"]) >= 1
    # A killed run's torn last line is left out; a broken line elsewhere is an error.
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss"')
    assert len(webssl.read_run(tmp_path / "run")["metrics"]) == 2
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1\n' + lines[1] + "\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        webssl.read_run(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        webssl.read_run(tmp_path / "nothing")
