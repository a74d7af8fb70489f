"""The torch path: tensors without copies, pinned memory, use as an IterableDataset."""

import numpy as np
import pytest

import webssl

torch = pytest.importorskip("torch")

SMALL = dict(size=56, local_size=28, n_local=2, patch_size=14, seed=2, shuffle_buffer=8)


def test_tensors_equal_the_numpy_batches(shards):
    a = webssl.Loader(shards, "dino", 4, **SMALL)
    t = webssl.Loader(shards, "dino", 4, torch=True, **SMALL)
    for _ in range(2):
        na, tb = next(a), next(t)
        assert isinstance(tb["global"], torch.Tensor) and tb["global"].dtype == torch.float32
        assert tb["masks"].dtype == torch.bool and tb["mask_indices_list"].dtype == torch.int64
        for k, v in na.items():
            if isinstance(v, np.ndarray):
                assert torch.equal(torch.from_numpy(v), tb[k]), k
        assert tb["keys"] == na["keys"]


def test_usable_as_an_iterable_dataset(shards):
    loader = webssl.Loader(shards, "mae", 4, torch=True, **SMALL)
    assert isinstance(loader, torch.utils.data.IterableDataset)
    dl = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=0)
    batch = next(iter(dl))
    assert batch["view"].shape == (4, 3, 56, 56) and batch["mae_mask"].shape == (4, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory(shards):
    loader = webssl.Loader(shards, "clip", 4, pin_memory=True, **SMALL)
    assert next(loader)["view"].is_pinned()
