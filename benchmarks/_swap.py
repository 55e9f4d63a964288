"""The swap control shared by ``benchmarks/accuracy.py`` (``swapped_r3``) and ``benchmarks/channel.py``
(``swapped``): every upstream agent (every agent but the decoder) reads ANOTHER item's question and fields, item
``(i + 1) % n``'s, while the decoder reads its own. If the trained links carried what the upstream agents read, the
decoder now answers its own question from another item's hand-offs and should fail; if accuracy holds, the links
carry nothing item-specific (a learned constant would do as well).

Done with fields, not a forked executor: :func:`swapped_topology` renames, in the upstream agents' templates only,
``{question}`` to ``{upstream_question}`` and every field ``{x}`` (``{context}``, ...) to ``{upstream_x}``;
:func:`swapped_items` gives item ``i`` those ``upstream_*`` fields from item ``(i + 1) % n``. The decoder's template
is untouched, so it reads item ``i``'s own question (and its own fields, were it to name any). In the channel
topologies only the upstream agents name ``{context}``, so this swaps the whole context; the upstream question is
swapped too, so a reader cannot pick the right fact out of the other context by its own question.

The swapped topology is a copy the topology validator never sees (:meth:`pydantic.BaseModel.model_copy`): the
validator asks every template for ``{question}``, which is exactly what the upstream templates must not have here.
So it runs in-process only (a cluster's coordinator re-validates the topology it is sent).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from recursivemas import prompts
from recursivemas.config import Topology
from recursivemas.eval.datasets import EvalItem

PREFIX = "upstream_"
UPSTREAM_QUESTION = PREFIX + prompts.QUESTION


def upstream_agents(topology: Topology) -> list[str]:
    return [a.name for a in topology.agents if a.name != topology.decoder]


def _rename(template: str, renames: set[str]) -> str:
    """``{name}`` -> ``{upstream_name}`` for each name in ``renames`` (``{{name}}`` stays a literal)."""
    def sub(match: re.Match) -> str:
        name = match.group(1)
        return "{" + PREFIX + name + "}" if name in renames else match.group(0)

    return prompts.PLACEHOLDER.sub(sub, template)


def swapped_topology(topology: Topology) -> Topology:
    """``topology`` whose upstream agents read ``{upstream_question}`` and ``{upstream_<field>}`` for their question
    and fields (named ``<name>-swapped``, so it never shares a cached system with the original)."""
    agents = []
    for agent in topology.agents:
        if agent.name == topology.decoder:
            agents.append(agent)
            continue
        renames = {prompts.QUESTION, *topology.fields_of(agent.name)}
        clash = sorted(f for f in topology.fields_of(agent.name) if f.startswith(PREFIX))
        if clash:
            raise ValueError(f"agents.{agent.name}: field {{{clash[0]}}} already starts with {PREFIX!r}, which the "
                             "swap control uses for the other item's fields; rename the field")
        update = {"prompt": _rename(prompts.resolve_template(agent.prompt or ""), renames)}
        if agent.later_prompt is not None:
            update["later_prompt"] = _rename(prompts.resolve_template(agent.later_prompt), renames)
        agents.append(agent.model_copy(update=update))
    return topology.model_copy(update={"agents": agents, "name": f"{topology.name}-swapped"})


def swapped_items(items: Sequence[EvalItem], topology: Topology) -> list[EvalItem]:
    """Each item with ``upstream_question`` and ``upstream_<field>`` (for every field an upstream agent of
    ``topology`` reads) taken from item ``(i + 1) % n``; its own question, reference, id and fields are kept."""
    n = len(items)
    if n < 2:
        raise ValueError(f"the swap control needs at least 2 items (got {n}): with one, item i's other item is "
                         "itself; raise --limit")
    names = list(dict.fromkeys(f for agent in upstream_agents(topology) for f in topology.fields_of(agent)))
    out = []
    for i, item in enumerate(items):
        other = items[(i + 1) % n]
        missing = [f for f in names if f not in other.fields]
        if missing:
            raise ValueError(f"item {other.id!r} has no {missing[0]!r} field, which an upstream agent of "
                             f"{topology.name!r} reads; every item must bring it")
        upstream = {UPSTREAM_QUESTION: other.question, **{PREFIX + f: other.fields[f] for f in names}}
        out.append(replace(item, fields={**item.fields, **upstream}))
    return out
