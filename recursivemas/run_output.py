"""What ``recursivemas run`` prints besides the answer: each agent turn as it finishes, the verdict against a
reference answer, and, for several modes, what they cost side by side."""

from __future__ import annotations

import sys


def check(text: str, reference: str) -> str:
    from recursivemas.answers import score

    verdict = score(text, reference, "number" if _is_number(reference) else "text")
    return f"{'right' if verdict.correct else 'wrong'}: read {verdict.extracted!r}, the reference is {reference!r}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def progress(rounds: int):
    """One stderr line per finished agent turn, so a long run shows where it is."""

    def report(usage) -> None:
        work = f"{usage.latent_steps} latent steps" if usage.kind == "latent" else f"{usage.decoded_tokens} tokens"
        print(f"  round {usage.round}/{rounds}  {usage.agent:<12} {usage.kind:<6} {work:<18} {usage.wall_s:6.2f} s",
              file=sys.stderr, flush=True)

    return report


def comparison(results, topology, options) -> str:
    base = results[-1]
    answer, message = options.generation.over(topology.generation)
    lines = [f"comparison: the same agents, prompts and {options.rounds_for(topology)} rounds; latent mode hands "
             f"over {options.latent_steps_for(topology)} latent steps per agent, text mode messages of up to "
             f"{message.max_new_tokens} tokens; answers of up to {answer.max_new_tokens} tokens"]
    for r in results:
        t = r.totals
        speed = f", {base.wall_s / r.wall_s:.2f}x the speed of {base.mode}" if r is not base and r.wall_s > 0 else ""
        lines.append(f"  {r.mode:>6}: {r.wall_s:6.2f} s, {t.decoded_tokens:5d} decoded tokens, "
                     f"{t.latent_steps:4d} latent steps{speed}")
    return "\n".join(lines)
