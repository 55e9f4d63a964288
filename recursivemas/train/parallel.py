"""Who computes what when training runs on several processes, and the few collectives it needs.

Two placements share one training loop (:mod:`recursivemas.train.loop`):

- ``replicated``: every rank holds every backbone; ranks split each batch and sum link gradients.
- ``pipelined``: each backbone lives on one rank of a pipeline (stage = backbone); an agent's hand-off is computed
  on its sender's rank and sent to its receiver's rank with ``torch.distributed`` point to point, and on the way
  back the receiver returns the gradient of what it received. ``replicas`` copies of the pipeline split each batch.

Link sets are tiny, so every rank keeps all of them: after each backward the link gradients are summed over all
ranks (a rank that did not use a link adds zeros) and every rank takes the same optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch

from recursivemas.config import Topology


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size``; ``stages`` backbones per pipeline (1 when replicated)."""

    rank: int = 0
    size: int = 1
    stages: tuple[str, ...] = ()  # pipelined: backbone of each stage, in rank order within a replica
    device: str = "cpu"  # where point-to-point tensors travel from: "cpu" for gloo, "cuda" for NCCL

    @property
    def pipelined(self) -> bool:
        return bool(self.stages)

    @property
    def replicas(self) -> int:
        return self.size // len(self.stages) if self.pipelined else self.size

    @property
    def replica(self) -> int:
        return self.rank // len(self.stages) if self.pipelined else self.rank

    def rank_of(self, backbone: str) -> int:
        """The rank holding ``backbone`` in this rank's pipeline."""
        return self.replica * len(self.stages) + self.stages.index(backbone)

    def holds(self, backbone: str) -> bool:
        return not self.pipelined or self.stages[self.rank % len(self.stages)] == backbone

    def share(self, batch: Sequence) -> list:
        """This rank's part of a batch: rows are split across replicas (a pipeline's ranks share its rows)."""
        return list(batch[self.replica :: self.replicas])

    def trains_inner(self, agents: Sequence[tuple[str, str]]) -> list[str]:
        """Stage 1 in parallel: agents (name, backbone) dealt round-robin over the ranks that hold their backbone."""
        mine = []
        for backbone in dict.fromkeys(b for _, b in agents):
            owners = [r for r in range(self.size) if _holds(self, r, backbone)]
            for i, name in enumerate(n for n, b in agents if b == backbone):
                if owners[i % len(owners)] == self.rank:
                    mine.append(name)
        return mine

    def inner_owner(self, agents: Sequence[tuple[str, str]], agent: str) -> int:
        for rank in range(self.size):
            if agent in World(rank, self.size, self.stages).trains_inner(agents):
                return rank
        raise KeyError(agent)


def _holds(world: World, rank: int, backbone: str) -> bool:
    return World(rank, world.size, world.stages).holds(backbone)


def pipeline_stages(topology: Topology) -> tuple[str, ...]:
    """One stage per backbone that some agent uses, in the topology's order."""
    used = {a.backbone for a in topology.agents}
    return tuple(name for name in topology.backbones if name in used)


# ---------------------------------------------------------------- collectives (no-ops in one process)


def sum_gradients(world: World, params: Iterable[torch.nn.Parameter]) -> None:
    """Sum link gradients over all ranks; a rank that never touched a parameter contributes zeros."""
    if world.size == 1:
        return
    import torch.distributed as dist

    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)


def sum_scalar(world: World, value: float) -> float:
    if world.size == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item()


def broadcast_module(world: World, module: torch.nn.Module, src: int) -> None:
    if world.size == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=src)


def gather_objects(world: World, value: object) -> list:
    if world.size == 1:
        return [value]
    import torch.distributed as dist

    out: list = [None] * world.size
    dist.all_gather_object(out, value)
    return out


# ---------------------------------------------------------------- pipelined hand-offs


@dataclass
class _Sent:
    tensor: torch.Tensor
    peer: int


@dataclass
class _Received:
    leaf: torch.Tensor
    peer: int


@dataclass
class Wire:
    """Carries hand-offs during one unrolled row. In one process (or ``replicated``) every agent is here and a
    hand-off is just computed. ``pipelined``, a hand-off between ranks is sent forward now and its gradient is
    returned by :meth:`backward`, which walks this rank's messages in reverse: every rank meets its messages in
    the same global order (all ranks follow the same plan), so the blocking sends and receives pair up."""

    world: World = field(default_factory=World)
    agent_backbone: dict[str, str] = field(default_factory=dict)
    events: list = field(default_factory=list)

    def here(self, agent: str) -> bool:
        return self.world.holds(self.agent_backbone[agent]) if self.world.pipelined else True

    def carry(self, src: str, dst: str, make: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
        """``dst``'s input from ``src``: computed (``make``) where ``src`` runs, received where ``dst`` runs."""
        src_here, dst_here = self.here(src), self.here(dst)
        if src_here and dst_here:
            return make()
        if src_here:
            sent = make()
            peer = self.world.rank_of(self.agent_backbone[dst])
            _send(torch.tensor(sent.shape, dtype=torch.int64, device=self.world.device), peer)
            _send(sent.detach().to(self.world.device), peer)
            if sent.requires_grad:
                self.events.append(_Sent(sent, peer))
            return None
        if dst_here:
            peer = self.world.rank_of(self.agent_backbone[src])
            shape = torch.empty(2, dtype=torch.int64, device=self.world.device)
            _recv(shape, peer)
            leaf = torch.empty(*shape.tolist(), dtype=torch.float32, device=self.world.device)
            _recv(leaf, peer)
            if torch.is_grad_enabled():
                leaf.requires_grad_(True)
                self.events.append(_Received(leaf, peer))
            return leaf
        return None

    def backward(self, loss: torch.Tensor | None) -> None:
        """Backpropagate this rank's part of the row: its loss (if it holds the decoder), then each message in
        reverse, returning received gradients to senders and pushing returned ones into the local graph."""
        if loss is not None:
            loss.backward(retain_graph=bool(self.events))
        for event in reversed(self.events):
            if isinstance(event, _Received):
                grad = event.leaf.grad
                _send(torch.zeros_like(event.leaf) if grad is None else grad, event.peer)
            else:
                grad = torch.empty(event.tensor.shape, dtype=event.tensor.dtype, device=self.world.device)
                _recv(grad, event.peer)
                event.tensor.backward(grad.to(event.tensor.device), retain_graph=True)
        self.events.clear()


def _send(tensor: torch.Tensor, peer: int) -> None:
    import torch.distributed as dist

    dist.send(tensor.contiguous(), dst=peer)


def _recv(tensor: torch.Tensor, peer: int) -> None:
    import torch.distributed as dist

    dist.recv(tensor, src=peer)


def check_batch_split(batch_size: int, replicas: int) -> None:
    """Every data-parallel replica takes an equal share of each step's rows."""
    if batch_size % replicas:
        raise ValueError(f"outer.batch_size: {batch_size} rows per step do not split evenly over {replicas} "
                         f"data-parallel replicas; use a multiple of {replicas}")
