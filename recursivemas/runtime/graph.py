"""The execution plan of a topology: who runs when, who hands over to whom.

Agents of a round run in topological levels of the in-round graph: agents in one level depend on nothing in that
level (mixture experts), so the executor may run them at once. In the final round only the decoder and the agents
upstream of it run; the rest would compute latents nobody reads.

The plan owns the round walk (:meth:`Plan.schedule`): inference (the executor) and training (stage 2's unroll) both
follow it, so a link is trained exactly on the turns and hand-offs that use it at inference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from recursivemas.config import Topology


@dataclass(frozen=True)
class PlannedTurn:
    """One agent's turn in one round: whether it decodes the answer, and whom it hands its thoughts to."""

    round: int
    agent: str
    decodes: bool  # the decoder in the final round: it writes the answer and hands nothing on
    handoffs: tuple[tuple[str, bool], ...]  # (target agent, along a feedback edge into the next round)

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(dst for dst, _ in self.handoffs)


@dataclass(frozen=True)
class Plan:
    levels: tuple[tuple[str, ...], ...]
    sources: dict[str, tuple[str, ...]]  # agent -> in-round sources
    feedback_sources: dict[str, tuple[str, ...]]  # agent -> sources in the previous round
    targets: dict[str, tuple[str, ...]]  # agent -> in-round targets
    feedback_targets: dict[str, tuple[str, ...]]  # agent -> targets in the next round
    decoder: str
    final_round_agents: frozenset[str]

    @classmethod
    def from_topology(cls, topology: Topology) -> Plan:
        names = [a.name for a in topology.agents]

        def group(edges: list[tuple[str, str]], key: int) -> dict[str, tuple[str, ...]]:
            return {n: tuple(e[1 - key] for e in edges if e[key] == n) for n in names}

        sources, targets = group(topology.edges, 1), group(topology.edges, 0)
        levels, placed = [], set()
        while len(placed) < len(names):
            level = tuple(n for n in names if n not in placed and set(sources[n]) <= placed)
            levels.append(level)
            placed.update(level)
        upstream, todo = {topology.decoder}, [topology.decoder]
        while todo:
            for src in sources[todo.pop()]:
                if src not in upstream:
                    upstream.add(src)
                    todo.append(src)
        return cls(
            levels=tuple(levels),
            sources=sources,
            feedback_sources=group(topology.feedback, 1),
            targets=targets,
            feedback_targets=group(topology.feedback, 0),
            decoder=topology.decoder,
            final_round_agents=frozenset(upstream),
        )

    def turn(self, round_: int, rounds: int, agent: str) -> PlannedTurn:
        final = round_ == rounds
        if final and agent == self.decoder:
            return PlannedTurn(round_, agent, True, ())
        handoffs = [(dst, False) for dst in self.targets[agent]]
        if not final:
            handoffs += [(dst, True) for dst in self.feedback_targets[agent]]
        return PlannedTurn(round_, agent, False, tuple(handoffs))

    def schedule(self, rounds: int) -> Iterator[tuple[PlannedTurn, ...]]:
        """Every level of every round, in execution order; the turns of one level may run at once."""
        for round_ in range(1, rounds + 1):
            for level in self.levels:
                agents = [a for a in level if round_ < rounds or a in self.final_round_agents]
                if agents:
                    yield tuple(self.turn(round_, rounds, agent) for agent in agents)

    def turns(self, rounds: int) -> Iterator[PlannedTurn]:
        """:meth:`schedule` flattened: the order every trainer (and every pipelined rank) walks."""
        for level in self.schedule(rounds):
            yield from level

    def single(self) -> tuple[PlannedTurn, ...]:
        """The ``single`` mode's one level: the decoder alone, answering in one turn."""
        return (PlannedTurn(1, self.decoder, True, ()),)

    def used_edges(self, rounds: int) -> list[tuple[str, str]]:
        """The outer links a run of ``rounds`` rounds reads (feedback links only with ``rounds > 1``)."""
        return list(dict.fromkeys((t.agent, dst) for t in self.turns(rounds) for dst in t.targets))
