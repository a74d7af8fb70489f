"""Shared fixtures: the `webssl` CLI to compare against, and small synthetic shard sets.

The CLI is `$WEBSSL_BIN`, else `target/debug/webssl` (then `target/release/webssl`) of this
repository (`cargo build -p webssl-cli`). Without it the comparisons are skipped, unless
`WEBSSL_REQUIRE_CLI=1` (CI) makes that a failure.
"""

import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _cli_path():
    if os.environ.get("WEBSSL_BIN"):
        return pathlib.Path(os.environ["WEBSSL_BIN"])
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "webssl"
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="session")
def cli():
    """Runs `webssl ARGS...`; returns the CompletedProcess (callers check the status)."""
    path = _cli_path()
    if path is None or not path.is_file():
        msg = "the webssl CLI is not built (cargo build -p webssl-cli, or set WEBSSL_BIN)"
        if os.environ.get("WEBSSL_REQUIRE_CLI") == "1":
            pytest.fail(msg)
        pytest.skip(msg)

    def run(*args):
        return subprocess.run(
            [str(path), *map(str, args)], capture_output=True, text=True, timeout=600
        )

    return run


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """48 synthetic 64 px samples in 4 shards, written by `webssl.synth`."""
    import webssl

    out = tmp_path_factory.mktemp("shards")
    webssl.synth(out, 48, size=64, seed=0, shard_size=12)
    return out


@pytest.fixture(scope="session")
def fixtures():
    return REPO / "fixtures"


def ok(proc):
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout
