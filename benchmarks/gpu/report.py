"""The markdown report of a GPU kit run (``benchmarks-gpu.md``), written from its results dict alone.

Kept apart from the measurements so the report can be regenerated from a ``results.json`` that came back from a
lease (``python3 benchmarks/gpu/report.py results.json out.md``) without a GPU, and so ``kit.py`` stays short.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render(results: dict) -> str:
    env, settings = results["environment"], results["settings"]
    title = "GPU kit: dry run (tiny configs on CPU)" if env["dry_run"] else "GPU kit: the engine on a GPU"
    lines = [
        f"# {title}", "",
        "Written by `benchmarks/gpu/run.sh` (measurements in `benchmarks/gpu/kit.py`); "
        f"{results.get('elapsed_s', '?')} s in all.", "",
        f"- device: **{env['device']}** ({env['device_type']}), dtype {env['dtype']}",
        f"- peak GPU memory allocated: {env['max_memory_allocated_gib']} GiB" if "max_memory_allocated_gib" in env
        else "- peak GPU memory: not measured (no GPU)",
        f"- torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, Python {env['python']}",
        "- weights: **random** — every backbone has the shape of the paper's Sequential-Light agent it names "
        "but random weights, so these numbers are speed, not quality",
        f"- tokenizer: {env['tokenizer']}; the LM head's rows outside printable ASCII are zeroed so greedy "
        "decoding stays on characters the tokenizer spells one token each (the head still projects onto the full "
        "vocabulary; the embeddings are tied, so the same input rows are zeroed, which changes no cost); "
        "end-of-sequence is disabled so every decode runs its full budget",
        f"- each time is the best of {settings['repeats']} runs, the device synchronised around every call; "
        f"pydantic loaded: {env.get('pydantic_loaded')}, Ray loaded: {env.get('ray_loaded')}", "",
        "## Backbones", "",
    ]
    lines += _table(["role", "shape", "config", "hidden", "layers", "heads", "kv heads", "intermediate", "vocab",
                     "parameters", "attention"],
                    [[b["role"], b["shape"], b["config"], b["hidden_size"], b["num_hidden_layers"],
                      b["num_attention_heads"], b["num_key_value_heads"], b["intermediate_size"], b["vocab_size"],
                      f"{b['parameters'] / 1e6:.1f} M", b["attn_implementation"]]
                     for b in results["backbones"].values()])
    if results.get("full_shapes"):
        lines += ["The GPU run's shapes, built on the meta device by this dry run:", ""]
        lines += _table(["shape", "parameters", "tied embeddings"],
                        [[shape, f"{f['parameters'] / 1e9:.3f} B", f["tied_embeddings"]]
                         for shape, f in results["full_shapes"].items()])
    lines += ["## Rollout: KV-cached against a full recompute per step", "",
              f"The critic's prompt holding a hand-off of {settings['handoff_steps']} latents; `m` latent steps. "
              "The recompute runs the whole sequence again for every step (the paper's released code); the "
              "difference is the largest absolute gap between the two rollouts' states.", ""]
    rows = []
    for shape, cases in results["rollout"].items():
        for key, c in cases.items():
            if key.startswith("m"):
                rows.append([shape, cases["prompt_positions"], key[1:], f"{c['kv_s']:.4f}", f"{c['recompute_s']:.4f}",
                             f"{c['speedup']:.2f}", f"{c['max_abs_diff']:.3g}", f"{c['rel_diff']:.3g}"])
    lines += _table(["backbone", "prompt positions", "m", "KV s", "recompute s", "speedup", "max abs diff",
                     "diff / max abs state"], rows)
    lines += ["## One latent step against one decode step", "",
              f"(time of n+1 steps − time of 1 step) / n with n = {settings['step_n']}, at the rollout prompt's "
              "context; a batch holds that many different questions, left-padded.", ""]
    rows = [[shape, batch.removeprefix("batch"), c["latent_step_ms"], c["decode_step_ms"], c["latent_over_decode"]]
            for shape, batches in results["steps"].items() for batch, c in batches.items()]
    lines += _table(["backbone", "batch", "latent ms/step", "decode ms/step", "latent / decode"], rows)
    chain = results.get("chain")
    lines += ["## Latent against text: a 3-agent sequential chain", ""]
    if chain:
        lines += [f"Planner → critic → solver on the three backbones above, batch 1. Latent: planner and critic "
                  f"roll out {chain['latent_steps_per_agent']} latent steps each and hand over through links "
                  "(outer(inner(H))), the solver decodes the answer. Text: planner and critic each decode a "
                  f"{chain['message_tokens']}-token message that fills the next prompt's slot, the solver decodes "
                  "the answer. Both decode the answer to the same budget.", ""]
        lines += _table(["mode", "wall s", "tokens decoded", "latent steps", "prompt positions per agent"],
                        [[mode, chain[mode]["wall_s"], chain[mode]["decoded_tokens"], chain[mode]["latent_steps"],
                          ", ".join(str(p) for p in chain[mode]["prompt_positions"])] for mode in ("latent", "text")])
        lines += [f"Text wall time / latent wall time: **{chain['text_over_latent_wall']}**; decoded-token "
                  f"reduction: **{chain['token_reduction']}**.", ""]
    else:
        lines += ["Not run.", ""]
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s}" for s in results["skipped"]] + [""]
    return "\n".join(lines)


def write_report(results: dict, path: Path) -> None:
    Path(path).write_text(render(results))


if __name__ == "__main__":
    write_report(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
