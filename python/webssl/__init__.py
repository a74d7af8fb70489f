"""webssl from Python: the data loader (DINOv2 multi-crop + iBOT masks, MAE and CLIP crops, eval
crops), frozen-feature embedding, VQA scoring and the synthetic data generator of the `webssl` Rust
tool, built from the same code (`webssl._webssl`, a PyO3 extension).

    import webssl
    loader = webssl.Loader("shards/", recipe="dino", batch_size=64, torch=True)
    for step, batch in zip(range(1000), loader):
        batch["global"]   # [2*64, 3, 224, 224] float32, view-major (view v of image i at row v*64 + i)
        batch["local"]    # [8*64, 3, 98, 98]
        batch["masks"]    # [2*64, 256] bool: iBOT masks of the global crops
    torch.save({"loader": loader.state_dict(), ...}, "ckpt.pt")

`Loader` is a `torch.utils.data.IterableDataset` when torch is installed; give it to a
`DataLoader(loader, batch_size=None, num_workers=0)` or iterate it directly. It has its own reader and
decode threads (the GIL is released while it works), so torch's worker processes add nothing.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, Optional, Union

from ._webssl import WebsslError, __version__, embed, synth, vqa_score
from ._webssl import Loader as _NativeLoader

try:  # torch is optional: without it batches are NumPy arrays and Loader is a plain iterable.
    import torch as _torch

    _Base: Any = _torch.utils.data.IterableDataset
except ImportError:  # pragma: no cover - exercised where torch is absent
    _torch = None
    _Base = object

__all__ = ["Loader", "WebsslError", "embed", "read_run", "synth", "vqa_score", "__version__"]

# Arrays of a batch; everything else ("index", "keys", "captions") is plain Python.
_NON_ARRAYS = ("index", "keys", "captions")


class Loader(_Base):
    """The webssl training loader over a shard directory (`index.json` + WebDataset tars).

    Yields batches forever (the sampler cycles through epochs; stop with `itertools.islice` or a
    step count) as dicts: per view group its views `[count*B, 3, H, W]` float32 (view-major, as
    dinov2's collate), `labels` `[B]` int64 (-1: none), `keys`, `captions`, `index` (batch number,
    continues across resume) and the recipe's masks — `dino`: `masks` `[2*B, T]` bool,
    `mask_indices_list` int64, `masks_weight` float32; `mae`: `mae_mask` `[B, T]` float32 (1 =
    removed), `ids_shuffle`, `ids_restore` int64. The crops and masks are those of
    `webssl shards bench --recipe ...` byte for byte.

    Arguments beyond the recipe: `rank`/`world_size` give this process's share of the shards,
    `seed` fixes every random stream, `num_workers` logical sampler workers (the resume unit),
    `shuffle_buffer` samples per worker, `decode_threads` (default: all cores; does not change the
    output), `torch=True` yields torch tensors (`torch.from_numpy`, no copy), `pin_memory=True` also
    pins them (needs a CUDA build of torch; unverified on a GPU).

    Unreadable shards, members and images are skipped and counted (`stats()`), never fatal; data
    that nothing can decode ends the loader with an error naming the shards.
    """

    def __init__(
        self,
        shards: Union[str, os.PathLike],
        recipe: str = "dino",
        batch_size: int = 32,
        *,
        torch: bool = False,
        pin_memory: bool = False,
        **options: Any,
    ) -> None:
        if (torch or pin_memory) and _torch is None:
            raise ImportError("webssl.Loader(torch=True) needs torch installed")
        self._native = _NativeLoader(os.fspath(shards), recipe, batch_size, **options)
        self._torch = torch or pin_memory
        self._pin = pin_memory

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self

    def __next__(self) -> Dict[str, Any]:
        batch = next(self._native)
        if self._torch:
            for name, value in batch.items():
                if name not in _NON_ARRAYS:
                    tensor = _torch.from_numpy(value)
                    batch[name] = tensor.pin_memory() if self._pin else tensor
        return batch

    def state_dict(self) -> Dict[str, Any]:
        """The position after the last batch returned (plus the settings that fix the stream):
        plain Python values, fit for `torch.save` / `json.dump`."""
        return self._native.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Continue from `state`: the next batch is the one after the batch `state` was taken at.
        The settings must be those the state was saved with (a ValueError names the one that is not)."""
        self._native.load_state_dict(state)

    def stats(self) -> Dict[str, Any]:
        """Counters: batches, samples read / decoded / skipped, the first skipped samples
        (`what`: `shard:key`, `reason`), wait and busy seconds, `wait_fraction`."""
        return self._native.stats()

    @property
    def views(self):
        """The view groups of a batch: `[(name, count, (C, H, W))]`."""
        return self._native.views

    @property
    def batch_size(self) -> int:
        return self._native.batch_size

    def close(self) -> None:
        """Stop the loader's threads (also done when it is garbage-collected)."""
        self._native.close()

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self._native)


def read_run(run_dir: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """The results of a `webssl pretrain` run directory: `config` (the text of
    `config.resolved.toml`), `metrics` (the rows of `metrics.jsonl`, one dict per step; a torn last
    line of a killed run is left out, as `--resume` does), `timing` (the rows of `timing.jsonl`) and
    `eval` (each `eval/*.json` probe result by file stem, e.g. `eval["knn"]`). Missing files are
    empty; a run directory that does not exist is a `FileNotFoundError`."""
    import json

    root = os.fspath(run_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"run directory {root} does not exist")

    def rows(name: str) -> list:
        path = os.path.join(root, name)
        if not os.path.exists(path):
            return []
        out = []
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # torn last line (no newline written yet)
                    break
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
        return out

    config_path = os.path.join(root, "config.resolved.toml")
    config = open(config_path, encoding="utf-8").read() if os.path.exists(config_path) else ""
    eval_dir = os.path.join(root, "eval")
    probes = {}
    if os.path.isdir(eval_dir):
        for name in sorted(os.listdir(eval_dir)):
            if name.endswith(".json"):
                with open(os.path.join(eval_dir, name), encoding="utf-8") as f:
                    probes[name[: -len(".json")]] = json.load(f)
    return {"config": config, "metrics": rows("metrics.jsonl"), "timing": rows("timing.jsonl"),
            "eval": probes}
