"""The checks a topology's graph must pass before anything runs: known agents, no self-loops or repeated edges,
no cycle inside a round (agents of a round form a DAG; recursion goes through ``feedback``), and a decoder that
every agent's latents can reach. Pure functions over agent names and edge lists, so the errors name the field."""

from __future__ import annotations


def check_graph(names: list[str], edges: list, feedback: list, decoder: str) -> None:
    """Raise ValueError naming the field (``edges``, ``feedback``, ``decoder``) of the first problem."""
    known = set(names)
    for field, group in (("edges", edges), ("feedback", feedback)):
        for src, dst in group:
            for end in (src, dst):
                if end not in known:
                    raise ValueError(f"{field}: {src}->{dst} names unknown agent {end!r}; agents are {names}")
            if src == dst:
                raise ValueError(f"{field}: {src}->{dst} is a self-loop; an agent's own latents already recur")
        if len(set(group)) != len(group):
            raise ValueError(f"{field}: an edge is listed twice in {[f'{s}->{d}' for s, d in group]}")
    both = set(edges) & set(feedback)
    if both:
        shown = [f"{s}->{d}" for s, d in sorted(both)]
        raise ValueError(f"feedback: {shown} also appear in edges; an edge is either in-round or feedback")
    if decoder not in known:
        raise ValueError(f"decoder: unknown agent {decoder!r}; agents are {names}")
    cycle = find_cycle(names, edges)
    if cycle:
        raise ValueError(
            f"edges: cycle inside a round {' -> '.join(cycle)}; agents in a round must form a DAG, "
            "move the edge that closes the loop to `feedback`"
        )
    graph = {n: [d for s, d in [*edges, *feedback] if s == n] for n in names}
    for name in names:
        if name != decoder and not _reaches(graph, name, decoder):
            raise ValueError(
                f"decoder: {decoder!r} is not reachable from agent {name!r}; add an edge or feedback edge so its "
                "latents reach the decoder, or remove the agent"
            )


def find_cycle(names: list[str], edges: list[tuple[str, str]]) -> list[str] | None:
    """A cycle (as a list of names, first repeated last) in the in-round graph, or None."""
    graph = {n: [d for s, d in edges if s == n] for n in names}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for name in names:
        if name not in state and (found := visit(name)):
            return found
    return None


def _reaches(graph: dict[str, list[str]], src: str, dst: str) -> bool:
    seen, todo = {src}, [src]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt == dst:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False
