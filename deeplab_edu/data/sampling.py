"""Which training sample comes when: a run is a pure function of its configuration.

Every sample is drawn from (seed, iteration, position in the batch) alone: :class:`Batches`
yields, for each iteration, the data-set indices of this process's share of the global batch,
and :class:`Samples` applies the random training transform with generators re-seeded from
those numbers. An interrupted run therefore resumes exactly (same data order, same crops and
flips), and several processes (DDP) split one global batch between them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch

from deeplab_edu import runtime

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Dataset(Protocol):
    """What the package reads images from: ``len`` and ``(uint8 (3, H, W), int64 (H, W))``
    pairs by index (a :class:`~deeplab_edu.data.VOCSegmentation`, a ``Subset``, a list)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def derived_seed(*numbers: int) -> int:
    """A 32-bit seed that depends on all of ``numbers`` (e.g. seed, iteration, position)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


class Samples(torch.utils.data.Dataset):
    """Applies the training transform with randomness drawn from (seed, iteration, position)."""

    def __init__(self, dataset: Dataset, transform: Transform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        iteration, position, index = key
        runtime.seed_everything(derived_seed(self.seed, iteration, position))
        image, target = self.dataset[index]
        return self.transform(image, target)


class Batches(torch.utils.data.Sampler):
    """Yields, for iterations ``start..stop-1``, this rank's share of the global batch.

    The global sample stream is a new random permutation of the data set per epoch (seeded by
    (seed, epoch)); global batch ``t`` is samples ``t*B .. t*B+B-1`` of that stream.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the number of processes {world_size}"
            )
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.share = range(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    def _index(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=generator)
        return int(self._order[offset])

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for iteration in range(self.start, self.stop):
            yield [(iteration, p, self._index(iteration * self.batch + p)) for p in self.share]
