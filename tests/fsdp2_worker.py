"""One rank of the FSDP2 check (tests/test_train_fsdp.py): a full fine-tune step of the tiny SD1 UNet,
sharded with torch's ``fully_shard`` over gloo as accelerate's FSDP2 transformer-based wrap shards it
(each module whose class the model names in ``_no_split_modules``, innermost first, then the root), on
this rank's half of a batch; rank 0 compares the gathered weights with one unsharded step on the
whole batch and writes ``ok`` or the largest difference to OUT.

usage: torchrun --nproc_per_node 2 tests/fsdp2_worker.py MODEL_FOLDER OUT
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard


def loss_of(unet: torch.nn.Module, inputs: dict[str, torch.Tensor], rows: slice) -> torch.Tensor:
    """The mean squared prediction of ``rows`` of the batch (a stand-in for the objective's loss)."""
    part = {k: v[rows] if v.dim() and v.shape[0] == 2 else v for k, v in inputs.items()}
    return unet(**part).sample.float().pow(2).mean()


def main(model: str, out: Path) -> None:
    from diffusers import UNet2DConditionModel

    from core.families import runtime

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(str(Path(model) / "unet")).train()
    inputs = runtime("sd1").dummy_inputs(dict(unet.config), 2, 64, torch.float32, torch.device("cpu"))
    reference = copy.deepcopy(unet)
    blocks = set(unet._no_split_modules)
    for module in reversed(list(unet.modules())):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(unet)
    optimizer = torch.optim.SGD(unet.parameters(), lr=1.0)  # the weights move by the gradient itself
    loss = loss_of(unet, inputs, slice(rank, rank + 1))
    loss.backward()  # FSDP2 reduce-scatters the gradients, averaged over the ranks
    optimizer.step()
    gathered = {name: p.full_tensor() for name, p in unet.named_parameters()}
    sharded = sum(1 for p in unet.parameters() if p.to_local().numel() < p.full_tensor().numel())
    if rank == 0:
        optimizer = torch.optim.SGD(reference.parameters(), lr=1.0)
        loss_of(reference, inputs, slice(0, world)).backward()
        optimizer.step()
        worst = max((gathered[name] - p).abs().max().item() for name, p in reference.named_parameters())
        out.write_text("ok" if worst < 1e-6 and sharded else f"sharded {sharded}, largest difference {worst}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
