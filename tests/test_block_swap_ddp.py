"""Block swap under DDP: each rank streams its own copy of the swapped blocks from host memory.

Two real processes on the CPU (gloo) under ``accelerate launch`` train the tiny FLUX.1 with 2 of
its 3 blocks swapped to the same weights; the plan counts the swapped blocks once per rank, as
every rank on one machine holds its own copy in (pinned) RAM.
"""

from __future__ import annotations

import pytest

from core.gpu import parse_spec
from core.plan.fit import judge, run_shape
from core.recipes import get_recipe
from core.units import GIB
from tests.train_helpers import launch, make_run, metrics, set_up, weight_hashes


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_ranks_each_swap_their_blocks_and_end_with_the_same_weights(tmp_path, tiny_models, kohya_dataset):
    data = kohya_dataset(((1, "a photo of sks dog", 4),))
    settings = {"blocks_to_swap": 2, "gradient_checkpointing": True}
    run = make_run(tmp_path / "run", tiny_models("flux"), data, "flux", settings=settings, schedule={"max_steps": 2}, processes=2)
    hashes = tmp_path / "hashes.txt"
    done = launch(run, 2, args=["--weights-hash", str(hashes)], timeout=420)
    assert done.returncode == 0, done.stderr[-3000:]
    final = weight_hashes(hashes, 2)
    assert sorted(rank for rank, _ in final) == ["0", "1"] and len({digest for _, digest in final}) == 1
    assert [m["step"] for m in metrics(run, "step")] == [1, 2]
    events = " ".join(e.get("message", "") for e in metrics(run, "event"))
    assert "blocks_to_swap = 2: blocks 2-3 of 3 stream from CPU memory" in events, events


@pytest.mark.slow
def test_ddp_broadcasts_the_trained_weights_but_not_the_swapped_blocks_host_copies(tmp_path, tiny_models, kohya_dataset, monkeypatch):
    """DDP broadcasts rank 0's parameters and buffers when it wraps the denoiser; the swapped blocks'
    frozen tensors live in host memory (NCCL broadcasts only GPU tensors), so they stay out."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from core.train.startup import keep_swapped_blocks_out_of_ddp

    run = make_run(tmp_path / "run", tiny_models("flux"), kohya_dataset(), "flux", settings={"blocks_to_swap": 2})
    trainer = set_up(run)
    denoiser, swap = trainer.session.model.components.denoiser, trainer.session.model.swap
    swapped = {t.data_ptr() for block in swap.swapped.values() for t in block.tensors}
    assert len(keep_swapped_blocks_out_of_ddp(denoiser, swap)) == sum(len(block.tensors) for block in swap.swapped.values())
    sent: set[int] = set()
    real = dist._broadcast_coalesced

    def spy(group, tensors, *args):
        sent.update(t.data_ptr() for t in tensors)
        return real(group, tensors, *args)

    monkeypatch.setattr(dist, "_broadcast_coalesced", spy)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        DistributedDataParallel(denoiser)
    finally:
        dist.destroy_process_group()
    trained = {p.data_ptr() for p in denoiser.parameters() if p.requires_grad}
    resident = {p.data_ptr() for p in denoiser.parameters() if not p.requires_grad} - swapped
    assert trained <= sent and resident <= sent  # the LoRA and the blocks that stay on the device are synced
    assert not swapped & sent


def test_the_plan_counts_the_swapped_blocks_in_ram_once_per_rank_on_one_machine():
    settings = get_recipe("flux-lora-12gb").resolved_settings()
    one = judge("flux", "lora", settings, parse_spec("1x12GB"), shape=run_shape("lora", None, {"num_processes": 1}, 256 * GIB))
    two = judge("flux", "lora", settings, parse_spec("2x12GB"), shape=run_shape("lora", None, {"num_processes": 2}, 256 * GIB))
    assert one.estimate.host is not None and two.estimate.host is not None
    swapped = one.estimate.host.training["swapped_blocks"]
    assert swapped > 8 * GIB  # 44 of FLUX.1's 57 blocks in fp8
    assert two.estimate.host.training["swapped_blocks"] == 2 * swapped
    assert two.ram_need_bytes > one.ram_need_bytes + swapped
