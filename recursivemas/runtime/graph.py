"""The execution plan of a topology: who runs when, who hands over to whom.

Agents of a round run in topological levels of the in-round graph: agents in one level depend on nothing in that
level (mixture experts), so the executor may run them at once. In the final round only the decoder and the agents
upstream of it run; the rest would compute latents nobody reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from recursivemas.config import Topology


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

    def agents_in_round(self, level: tuple[str, ...], final: bool) -> list[str]:
        return [a for a in level if not final or a in self.final_round_agents]
