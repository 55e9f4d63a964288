"""The Python API in one page: a topology run in this process, then the same topology on a local Ray cluster.

    python examples/quickstart.py                       # the demo topology (after `make demo` pulled its models)
    python examples/quickstart.py --topology my.yaml    # any topology file or built-in name

In-process, `load_system` loads one engine per backbone and runs the rounds here. On `Cluster`, each backbone is a
Ray actor shared by every agent that names it, a coordinator actor drives the rounds, and latents move actor to
actor through the object store. Both give the same runner: `run` and `run_batch`, returning `RunResult`s.
"""

from __future__ import annotations

import argparse

import ray

from recursivemas import load_system
from recursivemas.cluster import Cluster
from recursivemas.runtime import RunOptions

QUESTION = "Calculate 1 - 6.\n\nPut your final answer in \\boxed{}."


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="sequential-demo")
    parser.add_argument("--skip-cluster", action="store_true", help="only the in-process part")
    args = parser.parse_args(argv)

    system = load_system(args.topology)  # in this process
    latent = system.run(QUESTION, RunOptions(mode="latent"))
    text = system.run(QUESTION, RunOptions(mode="text"))
    print(f"latent: {latent.text.strip()!r}\n  {latent.totals}")
    print(f"text:   {text.text.strip()!r}\n  {text.totals}")
    batch = system.run_batch(["What is 2 + 3?", "What is 7 - 4?"], RunOptions(mode="latent"))  # batched per backbone
    print("batch:", [r.text.strip()[:40] for r in batch])
    out = {"latent": latent, "text": text, "batch": batch}
    if args.skip_cluster:
        return out

    with Cluster() as cluster:  # a local Ray on 127.0.0.1; Cluster(address="host:6379") joins one
        on_ray = cluster.system(args.topology)
        out["cluster"] = on_ray.run(QUESTION, RunOptions(mode="latent"))
        refs = [cluster.submit(args.topology, q) for q in ("What is 2 + 3?", "What is 7 - 4?")]  # in flight at once
        out["submitted"] = [r for ref in refs for r in ray.get(ref)]
        print(f"on Ray: {out['cluster'].text.strip()!r}; submitted: {len(out['submitted'])} answers")
    return out


if __name__ == "__main__":
    main()
