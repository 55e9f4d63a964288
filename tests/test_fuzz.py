"""Property-based bad input, everywhere input comes in (docs/reliability.md counts the kinds): request bodies and
gRPC requests, topology YAML, train configs, data rows, eval rows and link checkpoints. Whatever arrives, the
answer is the module's own clear error (a 4xx, a ConfigError, a DataError, ...), never a stray exception."""

from __future__ import annotations

import json
import math

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from recursivemas.serve.errors import APIError
from recursivemas.serve.openai_api import Limits, parse_payload, parse_request

# Derandomized: CI runs the same 100 examples each time (a new find must not decide whether a change lands); run
# with `--hypothesis-seed=random` to search further. Finds so far are kept as @example cases.
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
scalars = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
           | st.floats(allow_nan=False) | st.text(max_size=40) | st.sampled_from(["", "user", "latent", "\u0000",
                                                                                  "\U0001F600", "a" * 300]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
VALID = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8}
FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "stop",
          "seed", "n", "rounds", "latent_steps", "mode", "stream_options", "response_format", "tools", "logit_bias",
          "user", "unknown_field"]


def accepted_or_4xx(call) -> None:
    try:
        call()
    except APIError as err:
        assert 400 <= err.status < 500, err
        assert err.message


@SETTINGS
@given(json_values)
def test_any_json_value_is_a_request_or_a_4xx(value):
    accepted_or_4xx(lambda: parse_payload(value, Limits(), {"m"}))


@SETTINGS
@given(st.sampled_from(FIELDS), json_values)
def test_a_valid_body_with_one_field_set_to_anything_is_a_request_or_a_4xx(field, value):
    accepted_or_4xx(lambda: parse_payload({**VALID, field: value}, Limits(), {"m"}))
    accepted_or_4xx(lambda: parse_payload({**VALID, "messages": [{"role": "user", field: value}]}, Limits(), {"m"}))


@SETTINGS
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_request_or_a_4xx(body):
    accepted_or_4xx(lambda: parse_request(body, Limits(), {"m"}))


def test_deep_nesting_huge_numbers_and_lone_surrogates_are_4xx():
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"model": "m", "max_tokens": 1' + b"0" * 5000 + b"}",
                 b'{"model": "\\ud800", "messages": []}', json.dumps({**VALID, "temperature": 1e308 * 10}).encode(),
                 b'{"model": NaN}'):
        accepted_or_4xx(lambda b=body: parse_request(b, Limits(), {"m"}))


@SETTINGS
@given(st.text(max_size=30), st.lists(st.tuples(st.text(max_size=10), st.text(max_size=30)), max_size=4),
       st.dictionaries(st.sampled_from(["max_tokens", "temperature", "top_p", "rounds", "latent_steps", "seed"]),
                       st.integers(min_value=-(2 ** 31), max_value=2 ** 31 - 1), max_size=4),
       st.integers(min_value=-5, max_value=9), st.lists(st.text(max_size=8), max_size=6))
def test_any_grpc_request_is_a_request_or_a_4xx(prompt, messages, numbers, mode, stop):
    from recursivemas.serve.grpc_api import request_from_proto
    from recursivemas.serve.proto import recursivemas_pb2 as pb

    floats = {k: float(v) if k in ("temperature", "top_p") else v for k, v in numbers.items()}
    try:
        msg = pb.RunRequest(model="m", prompt=prompt, messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
                            mode=mode, stop=stop, **floats)
    except (ValueError, TypeError):  # protobuf refuses out-of-range scalars itself, before any of our code
        return
    accepted_or_4xx(lambda: request_from_proto(msg, Limits(), {"m"}))


# ------------------------------------------------------------------------------------- files users write by hand

TOPOLOGY = {"name": "t", "backbones": {"a": {"model": "tiny"}}, "pattern": "sequential",
            "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "a"}]}


def refused_cleanly(call, *errors) -> None:
    try:
        call()
    except errors as err:
        assert str(err)


@SETTINGS
@given(st.sampled_from(list(TOPOLOGY) + ["rounds", "latent_steps", "generation", "framing", "links_dtype", "tools",
                                         "edges", "decoder", "later"]), json_values)
@example(field="edges", value=False)  # found: `edges: false` escaped as a TypeError
def test_a_topology_file_with_any_field_is_loaded_or_refused_with_a_config_error(tmp_path_factory, field, value):
    from recursivemas.config import ConfigError, load_topology

    path = tmp_path_factory.mktemp("topology") / "t.yaml"
    path.write_text(yaml.safe_dump({**TOPOLOGY, field: value}))
    refused_cleanly(lambda: load_topology(path), ConfigError)
    agents = [{**TOPOLOGY["agents"][0], field: value}, TOPOLOGY["agents"][1]]
    path.write_text(yaml.safe_dump({**TOPOLOGY, "agents": agents}))
    refused_cleanly(lambda: load_topology(path), ConfigError)


@SETTINGS
@given(st.text(max_size=300))
def test_any_text_as_a_topology_or_train_file_is_refused_with_a_config_error(tmp_path_factory, text):
    from recursivemas.config import ConfigError, load_topology
    from recursivemas.train.config import load_train_config

    path = tmp_path_factory.mktemp("text") / "x.yaml"
    path.write_text(text)
    refused_cleanly(lambda: load_topology(path), ConfigError)
    refused_cleanly(lambda: load_train_config(path), ConfigError, ValueError)


@SETTINGS
@given(st.lists(json_values | st.text(max_size=40), min_size=1, max_size=6))
def test_any_data_or_eval_rows_are_read_or_refused_naming_the_line(tmp_path_factory, lines):
    from recursivemas.eval.datasets import load_eval_dataset
    from recursivemas.train.data import DataError, load_jsonl

    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    refused_cleanly(lambda: load_jsonl(path), DataError)
    refused_cleanly(lambda: load_eval_dataset(str(path)), ValueError)


@SETTINGS
@given(json_values, st.binary(max_size=300))
def test_any_link_checkpoint_is_loaded_or_refused_with_a_checkpoint_error(tmp_path_factory, manifest, weights):
    from recursivemas.links import LinkCheckpointError, LinkSet, ReleasedLinkError, import_released, load_links

    folder = tmp_path_factory.mktemp("links")
    (folder / "links.json").write_text(json.dumps(manifest))
    (folder / "links.safetensors").write_bytes(weights)
    refused_cleanly(lambda: load_links(folder, into=LinkSet({"a": 8}, [])), LinkCheckpointError)
    (folder / "adapter.pt").write_bytes(weights)
    refused_cleanly(lambda: import_released({"a": folder / "adapter.pt"}, {}), ReleasedLinkError)


def test_the_fuzzed_numbers_include_the_edges():
    assert math.isinf(1e308 * 10)  # the huge-float case above is really infinite, not a large finite number
