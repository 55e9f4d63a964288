"""The serve config tree: bad settings are refused with the field and the fix named, deployment options pass through
to Ray Serve unchanged, and the Serve config file we write is one Ray's own schema accepts and our builder reads."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from recursivemas.cli import main
from recursivemas.serve.app import GRPC_SERVICER, build, serve_config_file
from recursivemas.serve.config import BackboneDeployment, DeploymentOptions, ServeConfig
from tiny import save_tiny_pair


def test_defaults_serve_the_demo_on_this_machine_only():
    config = ServeConfig()
    assert config.topologies == ["sequential-demo"] and config.host == "127.0.0.1" and config.port == 8000
    assert config.batching.max_batch_size == 8 and config.limits.max_tokens == 1024


def test_topologies_from_a_comma_separated_string():
    """What ``serve run recursivemas.serve.app:build topologies=a.yaml,b.yaml`` hands the builder."""
    assert ServeConfig(topologies="a.yaml, b.yaml").topologies == ["a.yaml", "b.yaml"]


@pytest.mark.parametrize("raw,needle", [
    ({"topologies": []}, "topologies"),
    ({"port": 0}, "port"),
    ({"batching": {"max_batch_size": 0}}, "max_batch_size"),
    ({"batching": {"max_batch_siz": 4}}, "max_batch_siz"),  # a misspelt field is named, not ignored
    ({"backbones": {"m": {"num_replicas": 2, "autoscaling_config": {"max_replicas": 4}}}}, "give one"),
    ({"backbones": {"m": {"torch_threads": 0}}}, "torch_threads"),
    ({"router": {"max_ongoing_requests": 4}, "batching": {"max_batch_size": 8, "max_concurrent_batches": 2}},
     "at least 16"),
    ({"limits": {"max_tokens": -1}}, "max_tokens"),
])
def test_bad_settings_name_the_field(raw, needle):
    with pytest.raises(ValidationError, match=needle):
        ServeConfig.model_validate(raw)


def test_deployment_options_pass_through_over_our_defaults():
    options = DeploymentOptions(autoscaling_config={"min_replicas": 1, "max_replicas": 3},
                                ray_actor_options={"num_gpus": 1}).serve_options({"num_cpus": 0.25, "num_gpus": 0}, 64)
    assert options == {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 1}, "max_ongoing_requests": 64,
                       "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}
    assert BackboneDeployment(num_replicas=3, max_ongoing_requests=8).serve_options({}, 64) == \
        {"ray_actor_options": {}, "max_ongoing_requests": 8, "num_replicas": 3}


def test_backbones_keyed_by_an_unknown_model_are_refused(tmp_path):
    paths = save_tiny_pair(tmp_path)
    topology = {"name": "t", "backbones": {"a": {"model": str(paths["a"])}},
                "agents": [{"name": "solo", "backbone": "a"}], "decoder": "solo"}
    with pytest.raises(ValueError, match=r"name no model of the served topologies.*" + str(paths["a"])):
        build({"topologies": [topology], "backbones": {"smollm2": {"num_replicas": 2}}})


def test_a_bad_inline_topology_is_reported_as_a_topology():
    with pytest.raises(ValidationError) as info:
        ServeConfig(topologies=[{"name": "t", "backbones": {}, "agents": []}])
    assert "valid string" not in str(info.value) and "topologies.0" in str(info.value)


def test_serve_config_file_is_valid_for_ray_and_builds(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    paths = save_tiny_pair(tmp_path)
    topology = {"name": "t", "backbones": {"a": {"model": str(paths["a"])}},
                "agents": [{"name": "solo", "backbone": "a"}], "decoder": "solo"}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(topology))
    config = ServeConfig(topologies=[str(path)], port=8123, grpc_port=9123, batching={"max_batch_size": 4},
                         backbones={str(paths["a"]): {"num_replicas": 2}})
    file = yaml.safe_load(yaml.safe_dump(serve_config_file(config)))  # what `serve deploy` reads
    schema = ServeDeploySchema.model_validate(file)
    assert schema.http_options.host == "127.0.0.1" and schema.http_options.port == 8123
    assert schema.grpc_options.port == 9123 and schema.grpc_options.grpc_servicer_functions == [GRPC_SERVICER]
    (app,) = schema.applications
    assert app.import_path == "recursivemas.serve.app:build" and app.route_prefix == "/"
    assert app.args == {"topologies": [str(path.resolve())], "batching": {"max_batch_size": 4},
                        "backbones": {str(paths["a"]): {"num_replicas": 2}}}
    assert ServeConfig.model_validate(app.args).backbones[str(paths["a"])].num_replicas == 2
    assert type(build(app.args)).__name__ == "Application"


def test_cli_prints_the_serve_config_with_flags_over_the_file(tmp_path, capsys):
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"port": 9000, "limits": {"max_rounds": 3}}))
    assert main(["serve", "--config", str(config), "--max-tokens-limit", "64", "--host", "0.0.0.0",
                 "--print-config"]) == 0
    file = yaml.safe_load(capsys.readouterr().out)
    assert file["http_options"] == {"host": "0.0.0.0", "port": 9000}
    assert file["applications"][0]["args"] == {"topologies": ["sequential-demo"],
                                               "limits": {"max_tokens": 64, "max_rounds": 3}}


def test_a_topology_object_is_served_as_its_data():
    """`recursivemas serve --links` hands the config a Topology object; its preset must not read as edges too."""
    from recursivemas.config import load_topology

    topology = load_topology("sequential-demo")
    (served,) = ServeConfig(topologies=[topology]).topologies
    assert served.to_dict() == topology.to_dict()


def test_a_serve_config_file_loads_through_the_one_yaml_loader(tmp_path):
    """Missing file, not YAML, a typo'd key: each a ConfigError naming the file, as for topologies and train
    configs; a rejected API key is not echoed back."""
    from recursivemas.config import ConfigError

    with pytest.raises(ConfigError, match="serve config file .*nope.yaml does not exist"):
        ServeConfig.load(tmp_path / "nope.yaml")
    bad = tmp_path / "serve.yaml"
    bad.write_text("prot: 8001\n")
    with pytest.raises(ConfigError, match=r"serve.yaml: invalid serve config\n  - prot: unknown key.*port"):
        ServeConfig.load(bad)
    secret = "two words"  # whitespace: not a bearer key
    bad.write_text(yaml.safe_dump({"api_keys": [secret]}))
    with pytest.raises(ConfigError) as caught:
        ServeConfig.load(bad)
    assert secret not in str(caught.value)
    (tmp_path / "empty.yaml").write_text("")
    assert ServeConfig.load(tmp_path / "empty.yaml") == ServeConfig()
