"""The engine's GPU measurements, sized to run in a few minutes on a lent GPU with nothing but torch and transformers.

GPU machines come rarely and for minutes, with Python 3.12, torch and transformers but no Ray, no pydantic and no hub
access, and only a few tens of MiB travel to them. So this script:

- builds random-weight backbones with the SHAPES of the paper's Sequential-Light agents (Qwen3-1.7B, Llama-3.2-1B,
  Qwen2.5-Math-1.5B) directly on the GPU in bf16: the numbers are speed, never quality;
- tokenizes with a byte-level tokenizer built offline (the construction of ``tests/tiny.py``'s ``byte_tokenizer``);
- measures the real engine (``recursivemas.engine.BackboneEngine``, ``recursivemas.links.modules``,
  ``recursivemas.prompts``) without importing ``recursivemas/__init__.py`` or ``recursivemas/links/__init__.py``,
  which pull in ``recursivemas.config`` and so pydantic: :func:`engine_modules` registers those two packages as bare
  package objects whose ``__path__`` points at the real directories, so the submodules load from the working tree
  and their parents' ``__init__`` never runs;
- ``--dry-run`` runs the same code paths on tiny configs on the CPU in float32 in seconds, so CI catches rot.

What it measures (each figure the best of ``--repeats`` runs, CUDA synchronised around every timed call):
rollout (KV-cached latent rollout against a full recompute per step: max abs diff of the states and the speed ratio),
step cost (one latent step against one decode step, ms per step, at batch 1 and 8) and a 3-agent sequential chain
end to end (latent: two agents roll out m latent steps and hand over through links, the third decodes the answer;
text: the first two decode an N-token message each, the third the answer). Results go to ``OUT/results.json`` (also
rewritten after every backbone, so a run cut short still leaves something) and the report to
``OUT/benchmarks-gpu.md``; the last printed line is the results as one JSON object.

Run: ``bash benchmarks/gpu/run.sh [--dry-run]`` (it calls ``python3 benchmarks/gpu/kit.py --out DIR ...``).
"""

from __future__ import annotations

import argparse
import json
import platform
import string
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.questions import QUESTIONS  # noqa: E402

SPECIALS = ["<pad>", "<bos>", "<eos>"]
TOKENIZER_NAME = "byte-level BPE built offline (256 byte tokens + <pad>/<bos>/<eos>, no merges, no chat template)"
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
# The paper's Sequential-Light agents, in chain order: (role, shape name, transformers config class, sizes).
FULL = [
    ("planner", "Qwen3-1.7B", "Qwen3Config",
     dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
          intermediate_size=6144, head_dim=128, vocab_size=151936, max_position_embeddings=40960)),
    ("critic", "Llama-3.2-1B", "LlamaConfig",
     dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
          intermediate_size=8192, head_dim=64, vocab_size=128256, max_position_embeddings=131072)),
    ("solver", "Qwen2.5-Math-1.5B", "Qwen2Config",
     dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
          intermediate_size=8960, vocab_size=151936, max_position_embeddings=4096)),
]
TINY = [
    ("planner", "tiny-qwen3", "Qwen3Config",
     dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
          head_dim=12, vocab_size=384, max_position_embeddings=2048)),
    ("critic", "tiny-llama", "LlamaConfig",
     dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
          vocab_size=320, max_position_embeddings=2048)),
    ("solver", "tiny-qwen2", "Qwen2Config",
     dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=80,
          vocab_size=384, max_position_embeddings=2048)),
]


def engine_modules() -> types.SimpleNamespace:
    """The engine, links, prompts and reference rollout, imported without running ``recursivemas/__init__.py`` or
    ``recursivemas/links/__init__.py`` (both import ``recursivemas.config``, hence pydantic; the GPU image has none).
    """
    for name, folder in (("recursivemas", ROOT / "recursivemas"), ("recursivemas.links", ROOT / "recursivemas/links")):
        if name not in sys.modules:
            package = types.ModuleType(name, f"{name}, its __init__ skipped by benchmarks/gpu/kit.py")
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    from benchmarks._reference import recompute_rollout
    from recursivemas.engine import BackboneEngine, Prompt, Sampling
    from recursivemas.links.modules import InnerLink, OuterLink
    from recursivemas.prompts import ROLE_PROMPTS, Slot, render

    return types.SimpleNamespace(BackboneEngine=BackboneEngine, Prompt=Prompt, Sampling=Sampling, InnerLink=InnerLink,
                                 OuterLink=OuterLink, ROLE_PROMPTS=ROLE_PROMPTS, Slot=Slot, render=render,
                                 recompute_rollout=recompute_rollout)


def byte_tokenizer():
    """256 byte tokens plus three specials, so any text round-trips (``tests/tiny.py``'s construction)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")


class Timer:
    """Best-of timing that waits for the device before and after each call (rollout returns before CUDA is done)."""

    def __init__(self, device: torch.device, repeats: int):
        self.repeats = repeats
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def best(self, call) -> float:
        times = []
        for _ in range(self.repeats):
            self.sync()
            start = time.perf_counter()
            call()
            self.sync()
            times.append(time.perf_counter() - start)
        return min(times)


def build_backbone(m, spec, tokenizer, device: torch.device, dtype: torch.dtype, seed: int):
    """A random-weight model of the shape built on ``device``; its LM-head rows outside printable ASCII zeroed.

    Random logits over a 150k vocabulary would pick ids the byte tokenizer cannot spell, so a text message would
    come back shorter than the tokens decoded. Zeroing every other row of the (tied) LM head keeps greedy decoding on
    printable ASCII bytes, one token per character each way, while the head still projects onto the full vocabulary.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    role, shape, config_class, sizes = spec
    config = getattr(transformers, config_class)(**sizes, **IDS)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to(device)
    engine = m.BackboneEngine(model, tokenizer, name=shape)
    scale = engine.embedding_scale  # before masking: the scale of a real token embedding
    keep = torch.tensor(tokenizer(string.ascii_letters + string.digits + " .,;:=+-()", add_special_tokens=False)
                        ["input_ids"], device=device)
    with torch.no_grad():
        for weight in {id(w): w for w in (model.get_input_embeddings().weight,
                                          model.get_output_embeddings().weight)}.values():
            kept = weight[keep].clone()
            weight.zero_()
            weight[keep] = kept
    engine.eos_ids = set()  # decode exactly the tokens asked for: every mode pays the same budget
    link = m.InnerLink(engine.hidden_size, out_scale=scale).to(device).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    info = {"role": role, "shape": shape, "config": config_class, **sizes, "parameters": params,
            "attn_implementation": getattr(model.config, "_attn_implementation", None), "embedding_scale": scale}
    return engine, link, scale, info


def full_shapes_on_meta() -> dict:
    """The GPU run's configs built on the meta device (no memory, no time): a dry run catches a config that this
    transformers no longer accepts, and records the parameter counts the GPU run will build."""
    import transformers
    from transformers import AutoModelForCausalLM

    shapes = {}
    for _, shape, config_class, sizes in FULL:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(getattr(transformers, config_class)(**sizes, **IDS))
        tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
        shapes[shape] = {"parameters": sum(p.numel() for p in model.parameters()), "tied_embeddings": tied}
    return shapes


def critic_prompt(m, engine, scale: float, question: str, handoff_steps: int):
    """The critic's prompt holding a planner hand-off of ``handoff_steps`` latents: the shape a rollout sees."""
    latents = torch.randn(handoff_steps, engine.hidden_size, device=engine.device) * scale
    pieces = m.render(m.ROLE_PROMPTS["critic"], question, {"inputs": ["planner"]})
    return m.Prompt([latents if isinstance(p, m.Slot) else p for p in pieces])


def measure_rollout(m, engine, link, prompt, steps: list[int], timer: Timer) -> dict:
    out: dict = {"prompt_positions": engine.count_tokens(prompt)}
    for n in steps:
        (kv,) = engine.rollout([prompt], n, link)
        ref = m.recompute_rollout(engine, prompt, n, link)
        diff = float((kv.states.float() - ref.float()).abs().max())
        kv_s = timer.best(lambda n=n: engine.rollout([prompt], n, link))
        ref_s = timer.best(lambda n=n: m.recompute_rollout(engine, prompt, n, link))
        out[f"m{n}"] = {"kv_s": round(kv_s, 4), "recompute_s": round(ref_s, 4), "speedup": round(ref_s / kv_s, 2),
                        "max_abs_diff": diff, "max_abs_state": float(ref.float().abs().max()),
                        "rel_diff": diff / max(float(ref.float().abs().max()), 1e-12)}
    return out


def measure_steps(m, engine, link, prompts: list, n: int, timer: Timer) -> dict:
    """ms per latent step and per decode step at the same context: (time(n+1 steps) - time(1 step)) / n."""
    latent = (timer.best(lambda: engine.rollout(prompts, n + 1, link))
              - timer.best(lambda: engine.rollout(prompts, 1, link))) / n
    decode = (timer.best(lambda: engine.generate(prompts, m.Sampling(max_new_tokens=n + 1)))
              - timer.best(lambda: engine.generate(prompts, m.Sampling(max_new_tokens=1)))) / n
    return {"latent_step_ms": round(latent * 1e3, 3), "decode_step_ms": round(decode * 1e3, 3),
            "latent_over_decode": round(latent / decode, 3) if decode > 0 else None}


@torch.inference_mode()
def run_chain(m, chain, outer, question: str, mode: str, steps: int, tokens: int, count: bool = False) -> dict:
    """One pass of the 3-agent sequential chain. ``chain``: [(role, engine, inner link)], ``outer``: per edge.
    ``count`` also counts each agent's prompt positions (an extra embedding pass, so not in timed runs)."""
    handoff, sources, decoded, positions, text = None, {}, 0, [], ""
    for index, (role, engine, inner) in enumerate(chain):
        pieces = m.render(m.ROLE_PROMPTS[role], question, sources)
        prompt = m.Prompt([handoff if isinstance(p, m.Slot) else p for p in pieces])
        if count:
            positions.append(engine.count_tokens(prompt))
        last = index == len(chain) - 1
        if mode == "latent" and not last:
            (out,) = engine.rollout([prompt], steps, inner)
            link = outer[index]
            states = out.states.to(next(link.parameters()).dtype)
            handoff = link(inner(states))  # inner_outer: R_out(R_in(H)), the released systems' hand-off
        else:
            (gen,) = engine.generate([prompt], m.Sampling(max_new_tokens=tokens))
            decoded += len(gen.token_ids)
            handoff = text = gen.text
        sources = {"inputs": [role]}
    return {"decoded_tokens": decoded, "latent_steps": steps * (len(chain) - 1) if mode == "latent" else 0,
            "prompt_positions": positions, "answer_chars": len(text)}


def measure_chain(m, chain, outer, steps: int, tokens: int, timer: Timer) -> dict:
    question, result = QUESTIONS[0], {"latent_steps_per_agent": steps, "message_tokens": tokens}
    for mode in ("latent", "text"):
        result[mode] = run_chain(m, chain, outer, question, mode, steps, tokens, count=True)
        result[mode]["wall_s"] = round(timer.best(lambda mode=mode: run_chain(m, chain, outer, question, mode,
                                                                               steps, tokens)), 4)
    result["text_over_latent_wall"] = round(result["text"]["wall_s"] / result["latent"]["wall_s"], 2)
    result["token_reduction"] = round(1 - result["latent"]["decoded_tokens"] / result["text"]["decoded_tokens"], 3)
    return result


def environment(device: torch.device, dtype: torch.dtype, dry: bool) -> dict:
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "device_type": device.type, "dtype": str(dtype).removeprefix("torch."), "dry_run": dry,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None, "python": platform.python_version(),
            "tokenizer": TOKENIZER_NAME, "weights": "random (speed, not quality)"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny configs, CPU, float32, seconds")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/gpu/results"))
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rollout-steps", default=None, help="latent steps m for KV vs recompute, comma-separated")
    parser.add_argument("--step-n", type=int, default=None, help="steps timed for the per-step cost")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--chain-steps", type=int, default=None, help="latent steps m per agent in the chain")
    parser.add_argument("--chain-tokens", type=int, default=None, help="tokens N per message / answer")
    parser.add_argument("--handoff-steps", type=int, default=None, help="latents in the rollout prompt's slot")
    parser.add_argument("--budget-s", type=float, default=240.0, help="skip what is left past this many seconds")
    args = parser.parse_args(argv)
    small, full = dict(repeats=1, rollout_steps="3,6", step_n=4, chain_steps=4, chain_tokens=6, handoff_steps=4), \
        dict(repeats=3, rollout_steps="32,96", step_n=32, chain_steps=32, chain_tokens=64, handoff_steps=32)
    for key, value in (small if args.dry_run else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    args.dtype = args.dtype or ("float32" if args.dry_run else "bfloat16")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("kit: no CUDA device here; run with --dry-run for the CPU check")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = engine_modules()
    from benchmarks.gpu.report import write_report

    timer = Timer(device, args.repeats)
    tokenizer = byte_tokenizer()
    results: dict = {"environment": environment(device, dtype, args.dry_run),
                     "settings": {k: v for k, v in vars(args).items() if k != "out"},
                     "backbones": {}, "rollout": {}, "steps": {}, "chain": None, "skipped": []}
    batches = [int(b) for b in args.batches.split(",")]

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - started, 1)
        results["environment"]["pydantic_loaded"] = "pydantic" in sys.modules
        results["environment"]["ray_loaded"] = "ray" in sys.modules
        if device.type == "cuda":
            results["environment"]["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_report(results, out_dir / "benchmarks-gpu.md")

    chain = []
    for seed, spec in enumerate(TINY if args.dry_run else FULL):
        engine, link, scale, info = build_backbone(m, spec, tokenizer, device, dtype, seed)
        shape = info["shape"]
        results["backbones"][shape] = info
        chain.append((info["role"], engine, link, scale))
        print(f"kit: built {shape} ({info['parameters'] / 1e6:.1f} M parameters) at "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        if time.perf_counter() - started > args.budget_s:
            results["skipped"].append(f"rollout and steps on {shape}: past --budget-s")
            continue
        prompts = [critic_prompt(m, engine, scale, QUESTIONS[i % len(QUESTIONS)], args.handoff_steps)
                   for i in range(max(batches))]
        engine.rollout(prompts[:1], 2, link)  # warm-up: kernels, cuBLAS handles, allocator
        engine.generate(prompts[: max(batches)], m.Sampling(max_new_tokens=2))
        results["rollout"][shape] = measure_rollout(m, engine, link, prompts[0],
                                                    [int(s) for s in args.rollout_steps.split(",")], timer)
        results["steps"][shape] = {f"batch{b}": measure_steps(m, engine, link, prompts[:b], args.step_n, timer)
                                   for b in batches}
        print(f"kit: measured {shape} at {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        save()
    if args.dry_run:
        results["full_shapes"] = full_shapes_on_meta()
    if time.perf_counter() - started > args.budget_s:
        results["skipped"].append("chain: past --budget-s")
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(len(chain))
            outer = [m.OuterLink(src[1].hidden_size, dst[1].hidden_size, out_scale=dst[3]).to(device).eval()
                     .requires_grad_(False) for src, dst in zip(chain, chain[1:])]
        stages = [(role, engine, link) for role, engine, link, _ in chain]
        run_chain(m, stages, outer, QUESTIONS[1], "latent", 2, 2)  # warm-up
        results["chain"] = measure_chain(m, stages, outer, args.chain_steps, args.chain_tokens, timer)
    save()
    print(json.dumps(summary(results)))
    return results


def summary(results: dict) -> dict:
    """The headline figures, one flat JSON object (the project's last-line convention)."""
    env = results["environment"]
    line: dict = {"device": env["device"], "dtype": env["dtype"], "dry_run": env["dry_run"],
                  "pydantic_loaded": env["pydantic_loaded"], "ray_loaded": env["ray_loaded"]}
    for shape, cases in results["rollout"].items():
        for key, case in cases.items():
            if key.startswith("m"):
                line[f"{shape}/kv_speedup_{key}"] = case["speedup"]
                line[f"{shape}/max_abs_diff_{key}"] = float(f"{case['max_abs_diff']:.3g}")
    for shape, batches in results["steps"].items():
        for batch, case in batches.items():
            line[f"{shape}/latent_over_decode_{batch}"] = case["latent_over_decode"]
    if results["chain"]:
        line["chain/text_over_latent_wall"] = results["chain"]["text_over_latent_wall"]
        line["chain/token_reduction"] = results["chain"]["token_reduction"]
    line["elapsed_s"] = results["elapsed_s"]
    return line


if __name__ == "__main__":
    main()
