"""This rank's batches of an epoch, loaded (the step turns them into latents and conditioning)."""

from __future__ import annotations

from typing import Any

from core.errors import UserError


class Batches:
    """This rank's batches of an epoch, loaded, with a stand-in for a batch that failed to load."""

    def __init__(self, train_data: Any, settings: dict[str, Any], seed: int, rank: int, world: int, device: Any) -> None:
        self.train_data = train_data
        self.batch_size = int(settings["batch_size"])
        self.workers = int(settings["dataloader_workers"])
        self.seed = seed
        self.rank = rank
        self.world = world
        self.pin_memory = device.type == "cuda"
        self.fallback: dict[str, Any] | None = None

    def for_epoch(self, epoch: int) -> list[list[int]]:
        """This rank's batches (item indices) of ``epoch``, from the shared schedule code."""
        from core.train.data.items import batches_for_epoch

        return batches_for_epoch(self.train_data, self.batch_size, self.seed, epoch, self.rank, self.world)

    def iterate(self, epoch: int, batches: list[list[int]], start: int) -> Any:
        """``(index, batch, weight)`` from batch ``start`` on; class images paired when there are any.

        A batch whose images all failed to load is replaced by a stand-in with weight 0, so
        every rank still runs the same forward/backward (no rank is left in a collective).
        """
        from core.train.data.items import class_batches_for_epoch, make_loader

        classes = class_batches_for_epoch(self.train_data, batches, self.seed, epoch, self.rank, self.world) if self.train_data.class_items else None
        loader = make_loader(
            self.train_data,
            batches[start:],
            self.seed,
            epoch,
            self.workers,
            classes[start:] if classes is not None else None,
            pin_memory=self.pin_memory,
        )
        for offset, batch in enumerate(loader):
            weight = 1.0
            if batch is None:
                batch, weight = self._stand_in(loader.dataset), 0.0
            elif self.fallback is None:
                self.fallback = batch
            yield start + offset, batch, weight

    def _stand_in(self, dataset: Any) -> dict[str, Any]:
        if self.fallback is None:
            for n in range(len(dataset)):
                found = dataset[n]
                if found is not None:
                    self.fallback = found
                    break
        if self.fallback is None:
            raise UserError("no image of this epoch's batches could be read; run `sdtui scan` on the dataset and fix or remove the files it reports")
        return self.fallback
