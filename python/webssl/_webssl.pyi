"""Typed stubs of the native module `webssl._webssl` (python/src/*.rs)."""

import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

__version__: str

class WebsslError(Exception):
    """A webssl operation failed (the message is the CLI's)."""

class Loader:
    def __init__(
        self,
        shards: Union[str, os.PathLike],
        recipe: str = "dino",
        batch_size: int = 32,
        *,
        size: int = 224,
        local_size: int = 98,
        n_local: int = 8,
        patch_size: int = 14,
        mask_ratio: float = 0.75,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 1,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        decode_threads: Optional[int] = None,
        prefetch_batches: int = 4,
        max_pixels: int = 178956970,
    ) -> None: ...
    def __iter__(self) -> Iterator[Dict[str, Any]]: ...
    def __next__(self) -> Dict[str, Any]: ...
    def state_dict(self) -> Dict[str, Any]: ...
    def load_state_dict(self, state: Dict[str, Any]) -> None: ...
    def stats(self) -> Dict[str, Any]: ...
    def close(self) -> None: ...
    @property
    def views(self) -> List[Tuple[str, int, Tuple[int, int, int]]]: ...
    @property
    def batch_size(self) -> int: ...

def vqa_score(
    benchmark: str,
    predictions: Union[str, os.PathLike],
    annotations: Union[str, os.PathLike],
    *,
    strict: bool = False,
    protocol: str = "cambrian",
) -> Dict[str, Any]:
    """Score one VQA benchmark's predictions (JSONL) against its annotations; the report of
    `webssl eval vqa-score --output`."""

def synth(
    out: Union[str, os.PathLike],
    samples: int = 2000,
    *,
    size: int = 112,
    seed: int = 0,
    mix: str = "full",
    split: str = "train",
    shard_size: int = 500,
    shard_bytes: Optional[int] = None,
) -> Dict[str, Any]:
    """Write synthetic web-like shards into `out` (as `webssl synth`); returns the summary."""

def embed(
    model: Union[str, os.PathLike],
    inputs: Sequence[Any],
    *,
    features: Sequence[str] = ("cls", "patch_mean"),
    arch: Optional[str] = None,
    resolution: Optional[int] = None,
    preprocess: str = "pil",
    batch_size: int = 32,
    last_layers: int = 0,
    max_pixels: int = 178956970,
) -> Dict[str, Any]:
    """Frozen features of `model` for `inputs` — paths (as `webssl embed --input`: folders, image files,
    shards, lists) or uint8 `[H, W, 3]` RGB arrays (keys `array-{i}`), not both: `keys`, one array per feature
    (`cls` [N, D], `patch_mean` [N, D], `patch_tokens` [N, P, D], `registers` [N, R, D],
    `layer-{k}.cls` ...) and `skipped` [(what, why)]. `preprocess`: "pil" or "torchvision", which of
    transformers' image processors to reproduce (`webssl embed --preprocess`)."""
