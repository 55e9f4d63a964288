"""The plan of :mod:`recursivemas.plan` as one JSON-able report, its advice when it does not fit, and its renderings:
a readable table, and markdown rows for the docs (``recursivemas plan --markdown``)."""

from __future__ import annotations

import dataclasses
import json
import math
import re

from recursivemas.config import Topology
from recursivemas.plan import Actor, build_actors, in_process, links_of, need, place

_UNITS = {"": 1e9, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(text: str) -> int:
    """``80GB`` (10^9 bytes), ``80GiB`` (2^30), ``512MB``...; a bare number is GB."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 80GB, 80GiB or 512MB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def report(topology: Topology, gpus: int = 1, memory: int = 80 * 10**9, batch: int = 1, overhead: int = 10**9,
           prompt_tokens: int = 512) -> dict:
    """Everything ``recursivemas plan`` says about one topology, as plain data."""
    actors = build_actors(topology, prompt_tokens)
    placed = place(actors, gpus, memory, batch, overhead)
    one = in_process(actors, memory, batch, overhead)
    links = links_of(topology, actors)
    rows = [{
        "names": a.names, "model": a.config.model, "config_source": a.source, "architecture": a.architecture,
        "dtype": a.config.dtype, "device": a.config.device, "num_gpus": a.config.num_gpus, "agents": a.agents,
        "hidden_size": a.hidden_size, "parameters": a.params, "weight_bytes": a.weight_bytes(),
        "kv": {"tokens_per_turn": a.agent_tokens, "bytes_per_request": a.kv_bytes(),
               "attention_layers": len(a.cache.kv_per_token), "sliding_windows": a.cache.sliding_windows,
               "linear_attention_layers": len(a.cache.linear_state), "uncounted_layers": list(a.cache.unknown_layers)},
        "gpus": placed.assigned.get(a.names[0]), "need_bytes": need(a, batch, overhead) if a.on_gpu else 0,
    } for a in actors]
    return {
        "topology": topology.name, "pattern": topology.pattern,
        "settings": {"rounds": topology.rounds, "latent_steps": topology.latent_steps,
                     "max_new_tokens": topology.generation.max_new_tokens, "prompt_tokens": prompt_tokens,
                     "batch": batch, "gpus": gpus, "gpu_memory_bytes": memory, "overhead_bytes": overhead},
        "backbones": rows,
        "links": links,
        "placement": {"fits": placed.fits, "unplaced": placed.unplaced, "problems": placed.problems,
                      "gpus": [{"index": i, "backbones": [n for n, g in placed.assigned.items() if g[0] == i],
                                "used_bytes": used, "free_bytes": memory - used}
                               for i, used in enumerate(placed.used)]},
        "in_process": {"bytes": one, "fits": one <= memory, "on_gpu": any(a.on_gpu for a in actors)},
        "host_bytes": sum(a.weight_bytes() + batch * a.kv_bytes() for a in actors if not a.on_gpu),
        "fits": placed.fits,
        "advice": [] if placed.fits else advice(actors, placed, memory, batch, overhead, one),
        "notes": notes(actors),
        "assumptions": assumptions(topology, actors, prompt_tokens, overhead),
    }


def _with(actor: Actor, **changes) -> Actor:
    return dataclasses.replace(actor, config=actor.config.model_copy(update=changes))


def _share(actors: list[Actor], gpus: int) -> float:
    """The ``num_gpus`` fraction that packs every GPU backbone onto ``gpus`` GPUs."""
    return math.floor(100 / math.ceil(sum(a.on_gpu for a in actors) / gpus)) / 100


def packed_fits(actors: list[Actor], gpus: int, memory: int, batch: int, overhead: int) -> bool:
    return place(_packed(actors, gpus), gpus, memory, batch, overhead).fits


def _packed(actors: list[Actor], gpus: int) -> list[Actor]:
    share = _share(actors, gpus)
    return [_with(a, num_gpus=share) if a.on_gpu else a for a in actors]


def advice(actors: list[Actor], placed, memory: int, batch: int, overhead: int, one: int) -> list[str]:
    """What to change so it fits: GPUs per backbone, dtype, agents sharing a backbone, the caches."""
    out, gpu = [], [a for a in actors if a.on_gpu]
    gpus = placed.gpus
    wanted = sum(math.ceil(a.config.num_gpus) for a in gpu)
    for a in gpu:
        if a.config.num_gpus > 1:
            out.append(f"fewer GPUs per backbone: num_gpus: 1 on {a.names[0]!r}: the engine loads a backbone on one "
                       f"device, so {math.ceil(a.config.num_gpus) - 1} of the {a.config.num_gpus:g} GPUs it reserves "
                       "sit idle")
    if placed.unplaced and gpus:
        per_gpu = math.ceil(len(gpu) / gpus)
        packed = place(_packed(actors, gpus), gpus, memory, batch, overhead)
        names = ", ".join(a.names[0] for a in gpu)
        verdict = "fits" if packed.fits else "still does not fit: " + "; ".join(packed.problems)
        out.append(f"fewer GPUs per backbone: num_gpus: {_share(actors, gpus):g} on each of {names} ({per_gpu} per "
                   f"GPU): Ray then places them all, the fullest GPU at {gb(max(packed.used))} of {gb(memory)}: "
                   f"{verdict}")
    if placed.unplaced and wanted > gpus:
        out.append(f"{'or ' if gpus else ''}{wanted} GPUs, one per whole GPU the backbones reserve now "
                   f"(--gpus {wanted})")
    if placed.unplaced and gpus:
        out.append(f"or run in one process (without --cluster): every backbone on the one visible GPU, {gb(one)} of "
                   f"{gb(memory)}: {'fits' if one <= memory else 'does not fit'}")
    over = [i for i, used in enumerate(placed.used) if used > memory]
    on_over = [a for a in gpu if (placed.assigned.get(a.names[0]) or [None])[0] in over]
    if placed.unplaced and (one > memory or (gpus and not packed_fits(actors, gpus, memory, batch, overhead))):
        on_over = gpu  # packing them would overflow too: the dtype is a fix worth naming
    full = [a for a in on_over if a.config.dtype == "float32"]
    if full:
        halved = [_with(a, dtype="bfloat16") if a in full else a for a in actors]
        packing = bool(placed.unplaced and gpus)  # the GPU count needs the packing above as well
        fits = place(_packed(halved, gpus) if packing else halved, gpus, memory, batch, overhead).fits
        for a in full:
            out.append(f"dtype: bfloat16 on {a.names[0]!r} halves its weights ({gb(a.weight_bytes())} -> "
                       f"{gb(a.weight_bytes('bfloat16'))}) and its cache")
        out.append(f"with those in bfloat16{' and packed as above' if packing else ''} it "
                   + ("fits" if fits else "still does not fit"))
    by_model: dict[str, list[Actor]] = {}
    for a in gpu:
        by_model.setdefault(a.config.model, []).append(a)
    for model, group in by_model.items():
        if len(group) > 1:
            saved = sum(a.weight_bytes() for a in group[1:])
            out.append(f"agents sharing a backbone: {', '.join(n for a in group for n in a.names)} load the same "
                       f"model {model!r} as {len(group)} actors (they differ in dtype or device); give them one "
                       f"backbone (one actor) to save about {gb(saved)}")
    for i in over:
        on = [a for a in gpu if (placed.assigned.get(a.names[0]) or [None])[0] == i]
        if len(on) > 1 and gpus > 1:
            out.append(f"GPU {i} holds {', '.join(a.names[0] for a in on)}: give the largest a GPU of its own "
                       "(num_gpus: 1) if there are GPUs to spare")
        kv = batch * sum(a.kv_bytes() for a in on)
        if kv > 0.2 * memory:
            out.append(f"GPU {i}: the caches take {gb(kv)}: fewer requests at once (--batch) or a smaller answer "
                       "budget (generation.max_new_tokens) or fewer latent steps")
    for a in gpu:
        if a.weight_bytes("bfloat16") + overhead > memory:
            out.append(f"{a.names[0]!r} alone needs {gb(a.weight_bytes('bfloat16') + overhead)} even in bfloat16: "
                       "a larger GPU (the engine does not split one model across GPUs)")
    return out


def notes(actors: list[Actor]) -> list[str]:
    return [f"{a.names[0]!r} reserves {a.config.num_gpus:g} GPUs but uses one (num_gpus: 1 frees the rest)"
            for a in actors if a.config.num_gpus > 1]


def assumptions(topology: Topology, actors: list[Actor], prompt_tokens: int, overhead: int) -> list[str]:
    out = [f"a prompt of ~{prompt_tokens} tokens per turn (--prompt-tokens): system turn, template and question",
           "a turn's KV cache lives for that turn only: an agent's prompt, the latents handed to it (latent steps per "
           "source, and per feedback source from round 2), then its latent steps, or for the decoder's last turn the "
           "answer budget (max_new_tokens, plus the answer nudge); agents of one backbone that run at once (one "
           "level) add up, otherwise the largest counts",
           f"{gb(overhead)} per actor for the CUDA context, activations and allocator slack (--overhead), not measured",
           "the links run on the CPU of each backbone actor (and the coordinator): host memory, not GPU",
           "Ray places by num_gpus alone, first fit on one node of --gpus GPUs; it does not look at memory"]
    if any(a.cache.sliding_windows for a in actors):
        windows = sorted({w for a in actors for w in a.cache.sliding_windows})
        out.append(f"sliding-window layers keep at most window - 1 tokens (windows {windows}), as DynamicCache does")
    if any(a.cache.linear_state for a in actors):
        out.append("linear-attention layers (Qwen3.5's Gated DeltaNet) keep a fixed state per request, the conv "
                   "state in the model dtype and the recurrent state in float32; only full-attention layers grow")
    for a in actors:
        if a.cache.unknown_layers:
            out.append(f"{a.names[0]!r}: layers of type {sorted(set(a.cache.unknown_layers))} are not counted")
    if any("vision" in a.architecture.lower() or "ConditionalGeneration" in a.architecture for a in actors):
        out.append("multimodal checkpoints: the text model only (the engine does not load a vision tower)")
    shipped = [a.names[0] for a in actors if a.source.startswith("shipped")]
    if shipped:
        out.append(f"config.json of {', '.join(shipped)}: the one shipped with recursivemas (the base model's public "
                   "config, topologies/backbone_configs/README.md); a downloaded repo's own config wins")
    if topology.tools.max_rounds and any(a.tools for a in topology.agents):
        out.append("tool calls add their results to the decoding turn: not counted")
    if any(a.config.resources for a in actors):
        out.append("custom resources (backbones.*.resources) are not modelled")
    return out


def table(plan: dict) -> str:
    """The report as text for people."""
    s, gpus = plan["settings"], plan["placement"]["gpus"]
    lines = [f"plan: {plan['topology']} ({plan['pattern'] or 'custom graph'}, {s['rounds']} rounds, "
             f"{s['latent_steps']} latent steps, answer {s['max_new_tokens']} tokens, prompt ~{s['prompt_tokens']} "
             f"tokens, {s['batch']} request(s) at once) on {s['gpus']} GPU(s) x {gb(s['gpu_memory_bytes'])}", ""]
    head = ["backbone", "model", "params", "dtype", "weights", "KV/request", "num_gpus", "placed", "needs"]
    rows = [head] + [[
        "+".join(b["names"]), b["model"], count(b["parameters"]), b["dtype"], gb(b["weight_bytes"]),
        gb(b["kv"]["bytes_per_request"]), f"{b['num_gpus']:g}",
        ("GPU " + ",".join(map(str, b["gpus"]))) if b["gpus"] else ("host" if not b["need_bytes"] else "NOT PLACED"),
        gb(b["need_bytes"]) if b["need_bytes"] else "-"] for b in plan["backbones"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    links = plan["links"]
    lines += ["", f"links: {links['inner']} inner + {links['outer']} outer, {count(links['parameters'])} parameters "
                  f"in {links['dtype']} ({links['dtype_reason']}): {gb(links['bytes'])} of host memory per actor"]
    for g in gpus if plan["in_process"]["on_gpu"] else []:
        lines.append(f"GPU {g['index']}: {', '.join(g['backbones']) or 'free'}: {gb(g['used_bytes'])} of "
                     f"{gb(s['gpu_memory_bytes'])}")
    one = plan["in_process"]
    if one["on_gpu"]:
        lines.append(f"in one process (no --cluster): all on one GPU, {gb(one['bytes'])} of "
                     f"{gb(s['gpu_memory_bytes'])}: {'fits' if one['fits'] else 'does not fit'}")
    if plan["host_bytes"]:
        lines.append(f"on the CPU: {gb(plan['host_bytes'])} of host memory for the CPU backbones' weights and caches")
    lines += ["", "verdict: " + ("fits on Ray" if plan["fits"] else "does NOT fit on Ray")]
    lines += [f"  - {p}" for p in plan["placement"]["problems"]]
    if plan["advice"]:
        lines += ["to fix it:"] + [f"  - {a}" for a in plan["advice"]]
    if plan["notes"]:
        lines += ["notes:"] + [f"  - {n}" for n in plan["notes"]]
    lines += ["assumptions:"] + [f"  - {a}" for a in plan["assumptions"]]
    return "\n".join(lines)


MARKDOWN_HEAD = ("| built-in | backbones (parameters) | parameters | weights in bf16 / fp32 | KV cache per request "
                 "(as shipped) | links (bf16 / fp32) | on Ray as shipped | in one process |\n"
                 "|---|---|---|---|---|---|---|---|")


def markdown_row(plan: dict) -> str:
    total = sum(b["parameters"] for b in plan["backbones"])
    kv = sum(b["kv"]["bytes_per_request"] for b in plan["backbones"])
    gpus = [g for g in plan["placement"]["gpus"] if g["backbones"]]
    fullest = max((g["used_bytes"] for g in gpus), default=0)
    one, memory = plan["in_process"], plan["settings"]["gpu_memory_bytes"]
    if not one["on_gpu"]:
        ray = local = f"CPU: {gb(plan['host_bytes'])} of host memory"
    else:
        ray = (f"{len(gpus)} GPU{'s' * (len(gpus) > 1)}, at most {gb(fullest)} on one" if plan["fits"]
               else f"does not fit on {plan['settings']['gpus']} GPUs")
        local = f"{gb(one['bytes'])} on one GPU: {'fits in' if one['fits'] else 'over'} {gb(memory)}"
    links = plan["links"]["parameters"]
    return (f"| `{plan['topology']}` | " + ", ".join(f"{'+'.join(b['names'])} {count(b['parameters'])}"
                                                  for b in plan["backbones"])
            + f" | {count(total)} | {gb(2 * total)} / {gb(4 * total)} | {gb(kv)} | {count(links)}: "
              f"{gb(2 * links)} / {gb(4 * links)} | {ray} | {local} |")


def as_json(plans: list[dict]) -> str:
    return json.dumps(plans[0] if len(plans) == 1 else {"plans": plans}, indent=2)
