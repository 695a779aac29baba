"""Block swap (``settings.blocks_to_swap = N``): the denoiser's last N blocks live in (pinned) CPU
memory and are copied to the device on their turn, in forward and in backward.

The blocks are the ``ModuleList``s the family spec names (``FamilySpec.swap_blocks``), in the
order the forward runs them. Under a LoRA only the frozen tensors of a swapped block travel
(base weights, quantized or not, and buffers); trained parameters (LoRA) stay on the device, so
the optimizer never sees a moved tensor. The copies only go host -> device: the base is frozen,
so a block leaving the device just lets go of its device copy (the tensors point at the host
copy again).

Under a full fine-tune (``trains=True``) a swapped block's trained parameters travel too: their
host copy is the master the optimizer steps (on the CPU, beside the device parameters it steps
on the device: one optimizer, whose state follows each parameter's device). Each one's gradient
goes device -> host as autograd finishes it (``register_post_accumulate_grad_hook``, on a second
side stream), is summed there over the micro-batches of a step, and its device copy freed.
:meth:`BlockSwap.before_step` then waits for those copies, points every swapped block back at
its host master and hands the optimizer the host gradients; the next forward copies the stepped
weights to the device again.

- Forward: a block's pre-hook makes it resident (waiting for its copy) and starts copying the
  next swapped block on a side CUDA stream (one block of prefetch); its post-hook drops it,
  except the last block when a backward will follow (backward needs it first). The first
  swapped block, which a backward leaves resident, stays for the next forward.
- Backward: a hook on each output of a swapped block fires when the gradient reaches the block,
  before any of its backward runs: the block is made resident, the block before it is
  prefetched, and the blocks after it (their backward is done) are dropped. Without
  gradient checkpointing autograd holds the weights themselves (the parameter objects), so
  re-pointing them at the device copy is what backward reads; with checkpointing the
  recomputed forward runs inside backward, where the hooks only make the block resident.
  Autocast caches the half copy of every fp32 trained weight until the forward ends; a full
  fine-tune's swapped block clears that cache as it ends (what backward needs it keeps itself).

On the CPU the "device copy" is a fresh copy in host memory, so the bookkeeping (the order of
the moves in :attr:`BlockSwap.moves`, the hooks, the pointers) runs exactly as on a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class _Block:
    """One swapped block: its moving tensors with their host copies, and its device copies while it has them."""

    tensors: list[torch.Tensor]
    host: list[torch.Tensor]
    device: list[torch.Tensor] = field(default_factory=list)
    event: Any = None
    resident: bool = False


@dataclass
class _Grad:
    """A swapped trained parameter's gradient in host memory, summed over the micro-batches of one
    optimizer step (``arrived``: whether any micro-batch of this step gave one yet)."""

    param: torch.Tensor
    host: torch.Tensor
    arrived: bool = False


def blocks_of(denoiser: nn.Module, paths: Sequence[str]) -> list[nn.Module]:
    """The denoiser's blocks in forward order: each ``ModuleList`` at ``paths`` in turn."""
    return [block for path in paths for block in denoiser.get_submodule(path)]


def _in_backward() -> bool:
    """Whether autograd's engine is running this code (a checkpoint's recompute or a gradient hook)."""
    return bool(torch._C._current_graph_task_id() != -1)


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)
    elif hasattr(output, "to_tuple"):
        yield from _tensors(output.to_tuple())


class BlockSwap:
    """Streams the last ``count`` of ``blocks`` between host memory and ``device`` around their calls.

    :meth:`place` puts a denoiser on the device with those blocks' frozen tensors left in host
    memory and installs the hooks; :meth:`remove` takes them out (the blocks stay where they are).
    """

    def __init__(self, blocks: Sequence[nn.Module], count: int, device: torch.device, trains: bool = False) -> None:
        if not 0 < count < len(blocks):
            raise ValueError(f"blocks_to_swap must be between 1 and {len(blocks) - 1}, not {count}")
        self.modules = list(blocks)
        self.first = len(self.modules) - count
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        #: Whether the swapped blocks' parameters are trained (a full fine-tune): they travel with their gradients.
        self.trains = trains
        self.grad_stream = torch.cuda.Stream(self.device) if self.cuda and trains else None
        self.swapped: dict[int, _Block] = {}
        #: The swapped trained parameters' host gradients (a full fine-tune), in block order.
        self.grads: list[_Grad] = []
        #: ("load", i) when a copy of block i starts, ("use", i) when it becomes resident, ("drop", i) when it leaves.
        self.moves: list[tuple[str, int]] = []
        self._handles: list[Any] = []

    @property
    def count(self) -> int:
        """How many blocks are swapped."""
        return len(self.modules) - self.first

    def place(self, denoiser: nn.Module) -> None:
        """Move ``denoiser`` to the device except the swapped blocks' moving tensors (to host memory:
        the frozen ones, and the trained ones too when :attr:`trains`), and hook the blocks."""
        inside = {id(m) for block in self.modules[self.first :] for m in block.modules()}
        for module in denoiser.modules():
            if id(module) not in inside:
                for tensor in _own_tensors(module):
                    _move(tensor, self.device)
        for index in range(self.first, len(self.modules)):
            moving = []
            for module in self.modules[index].modules():
                for tensor in _own_tensors(module):
                    if self.trains or not tensor.requires_grad:
                        moving.append(tensor)
                    else:
                        _move(tensor, self.device)
            host = [_host_copy(t, self.cuda) for t in moving]
            for tensor, copy in zip(moving, host):
                tensor.data = copy
                if tensor.requires_grad:
                    self._add_grad(tensor, copy)
            self.swapped[index] = _Block(moving, host)
        for index, block in enumerate(self.modules):
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(index)))
            if index in self.swapped:
                self._handles.append(block.register_forward_hook(self._post_hook(index)))

    def _add_grad(self, param: torch.Tensor, master: torch.Tensor) -> None:
        """Give a swapped trained parameter a host gradient buffer (pinned on a GPU) and the hook that fills it."""
        host = torch.empty_like(master, pin_memory=self.cuda)
        entry = _Grad(param, host)
        self.grads.append(entry)
        self._handles.append(param.register_post_accumulate_grad_hook(self._grad_back(entry)))

    def remove(self) -> None:
        """Take the hooks out."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def resident(self) -> list[int]:
        """The swapped blocks now on the device, in order."""
        return [i for i, b in self.swapped.items() if b.resident]

    def trained_params(self) -> list[torch.Tensor]:
        """The swapped blocks' trained parameters (stepped on the CPU; none under a LoRA)."""
        return [entry.param for entry in self.grads]

    def before_step(self) -> None:
        """Ready the swapped parameters for the optimizer step: wait for the copies in flight, point
        every swapped block at its host master (a device copy would be stale once the master is
        stepped) and give each trained parameter its summed host gradient (None when no
        micro-batch gave one); the next micro-batch starts a new sum."""
        if not self.grads:
            return
        for stream in (self.stream, self.grad_stream):
            if stream is not None:
                stream.synchronize()
        self._keep_only(set())
        for entry in self.grads:
            entry.param.grad = entry.host if entry.arrived else None
            entry.arrived = False

    # the moves

    def prefetch(self, index: int) -> None:
        """Start copying swapped block ``index`` to the device (on the side stream on a GPU); nothing when it is not swapped or already there."""
        block = self.swapped.get(index)
        if block is None or block.resident or block.device:
            return
        self.moves.append(("load", index))
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                block.device = [h.to(self.device, non_blocking=True) for h in block.host]
                block.event = torch.cuda.Event()
                block.event.record(self.stream)
        else:
            block.device = [h.clone() for h in block.host]

    def use(self, index: int) -> None:
        """Make swapped block ``index`` resident: its tensors point at its device copy (copied now when not prefetched)."""
        block = self.swapped.get(index)
        if block is None or block.resident:
            return
        self.prefetch(index)
        if block.event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(block.event)
            for copy in block.device:
                for part in _plain_parts(copy):
                    part.record_stream(current)
        for tensor, copy in zip(block.tensors, block.device):
            tensor.data = copy
        block.device, block.event, block.resident = [], None, True
        self.moves.append(("use", index))

    def drop(self, index: int) -> None:
        """Let swapped block ``index`` leave the device: its tensors point at the host copy again (nothing is copied back)."""
        block = self.swapped.get(index)
        if block is None or not (block.resident or block.device):
            return
        for tensor, host in zip(block.tensors, block.host):
            tensor.data = host
        block.device, block.event, block.resident = [], None, False
        self.moves.append(("drop", index))

    def _keep_only(self, keep: set[int]) -> None:
        for index in self.swapped:
            if index not in keep:
                self.drop(index)

    # the hooks

    def _pre_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if _in_backward():  # a checkpoint recomputing the block: its backward follows
                self.use(index)
                return
            self._keep_only({index, index + 1, max(index, self.first)})  # the first swapped block may wait from the last backward
            self.use(index)
            self.prefetch(index + 1)

        return hook

    def _post_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if _in_backward():
                return
            backward_follows = False
            if torch.is_grad_enabled():
                for tensor in _tensors(output):
                    if tensor.requires_grad:
                        tensor.register_hook(self._grad_hook(index))
                        backward_follows = True
            if not (backward_follows and index == len(self.modules) - 1):
                self.drop(index)
            if self.trains and torch.is_autocast_enabled(self.device.type):
                torch.clear_autocast_cache()  # autocast's half copies of the trained weights would pile up on the device for the whole forward

        return hook

    def _grad_back(self, entry: _Grad) -> Any:
        """The hook that takes a swapped parameter's fresh device gradient to its host buffer
        (copied for the first micro-batch of a step, added for the others) and frees it."""

        def hook(param: torch.Tensor) -> None:
            grad = param.grad
            param.grad = None
            if grad is None:
                return
            if self.grad_stream is None:  # the CPU: the "device" gradient is host memory already
                if entry.arrived:
                    entry.host.add_(grad)
                else:
                    entry.host.copy_(grad)
            else:
                self.grad_stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.grad_stream):
                    if entry.arrived:  # sum on the device: the host copy comes over, takes the new gradient and goes back
                        total = entry.host.to(self.device, non_blocking=True)
                        total.add_(grad)
                        entry.host.copy_(total, non_blocking=True)
                    else:
                        entry.host.copy_(grad, non_blocking=True)
                grad.record_stream(self.grad_stream)
            entry.arrived = True

        return hook

    def _grad_hook(self, index: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            self._keep_only({i for i in self.swapped if i <= index})  # the blocks after it are through their backward
            self.use(index)
            self.prefetch(index - 1)

        return hook


def _own_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers ``module`` holds itself (not its children's)."""
    return [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]


def _move(tensor: torch.Tensor, device: torch.device) -> None:
    """Point ``tensor`` at a copy on ``device`` (with a bitsandbytes 4-bit weight's quantization state)."""
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        state.to(device)
    if tensor.device != device:
        tensor.data = tensor.data.to(device)


def _plain_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding ``tensor``'s data: itself, or a tensor subclass's inner tensors (torchao's)."""
    if type(tensor) is torch.Tensor or not hasattr(tensor, "__tensor_flatten__"):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [part for name in names for part in _plain_parts(getattr(tensor, name))]


def _host_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    """``tensor``'s data in host memory, pinned for asynchronous copies when a GPU is used (a tensor
    subclass such as torchao's stays pageable: its copies are then synchronous); a 4-bit weight's
    quantization state stays on the device."""
    host = tensor.data.to("cpu")
    if not pin or type(host) is not torch.Tensor or host.is_pinned():
        return host
    return host.pin_memory()
