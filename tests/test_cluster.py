"""The cluster runtime on a real local Ray: same answers as in-process, shared actors, batching, faults, bad input."""

from __future__ import annotations

import time

import pytest
import ray

from recursivemas.cluster import BackboneFailure, Cluster
from recursivemas.config import Topology
from recursivemas.runtime import MissingFieldError, Query, RunOptions, load_system
from tiny import save_tiny, save_tiny_pair

pytestmark = pytest.mark.ray  # starts Ray: `make test-fast` leaves these out

QUESTION = "What is 6*7?"
PATTERN_AGENTS = {
    "sequential": [("planner", "a"), ("critic", "b"), ("solver", "b")],
    "mixture": [("e1", "a"), ("e2", "b"), ("e3", "a"), ("summ", "b")],
    "distillation": [("expert", "a"), ("learner", "b")],
    "deliberation": [("reflector", "a"), ("caller", "b")],
}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-models")
    return save_tiny_pair(root)


def topology(model_dirs, pattern: str, name: str | None = None, **extra) -> Topology:
    data = {
        "name": name or f"cluster-{pattern}",
        "backbones": {k: {"model": v} for k, v in model_dirs.items()},
        "agents": [{"name": n, "backbone": b} for n, b in PATTERN_AGENTS[pattern]],
        "pattern": pattern, "rounds": 2, "latent_steps": 3, "generation": {"max_new_tokens": 6},
        **extra,
    }
    return Topology.model_validate(data)


@pytest.fixture(scope="module")
def cluster():
    with Cluster(num_cpus=2) as c:
        yield c


def test_the_cluster_system_is_a_runner_that_reports_turns_after_the_run(cluster, model_dirs):
    system, heard = cluster.system(topology(model_dirs, "sequential")), []
    (result,) = system.run_batch([QUESTION], RunOptions(mode="latent"), on_turn=heard.append)
    assert heard == result.usage and heard[-1].kind == "answer"  # every turn, in order, once


@pytest.mark.parametrize("pattern", sorted(PATTERN_AGENTS))
def test_cluster_equals_in_process(cluster, model_dirs, pattern):
    t = topology(model_dirs, pattern)
    local = load_system(t)
    for mode in ("latent", "text"):
        remote, here = cluster.run(t, QUESTION, RunOptions(mode=mode)), local.run(QUESTION, RunOptions(mode=mode))
        assert remote.text == here.text, (pattern, mode)
        assert [(u.agent, u.round, u.kind, u.prompt_tokens, u.latent_in, u.decoded_tokens) for u in remote.usage] == \
               [(u.agent, u.round, u.kind, u.prompt_tokens, u.latent_in, u.decoded_tokens) for u in here.usage]
    assert any(u.decoded_tokens for u in remote.usage), "the text run decoded nothing: the comparison is empty"


def test_fields_reach_the_coordinator_and_answer_as_in_process(cluster, model_dirs):
    """A planner whose template names {context}: the cluster's answer with a context is the in-process one (greedy),
    through run, submit and run_batch of Query objects; a missing context fails on the driver, naming the agent."""
    reader = "Context: {context}\nQuestion: {question}\nFeedback: {feedback}\nPass it on."
    t = topology(model_dirs, "sequential", name="cluster-fields",
                 agents=[{"name": "planner", "backbone": "a", "prompt": reader},
                         {"name": "critic", "backbone": "b"}, {"name": "solver", "backbone": "b"}])
    local, context = load_system(t), "The code is 4711."
    for mode in ("latent", "text"):
        options = RunOptions(mode=mode)
        remote = cluster.run(t, QUESTION, options, context=context)
        here = local.run(QUESTION, options, context=context)
        assert remote.text == here.text, mode
        assert [(u.agent, u.kind, u.prompt_tokens, u.decoded_tokens) for u in remote.usage] == \
               [(u.agent, u.kind, u.prompt_tokens, u.decoded_tokens) for u in here.usage]
    expected = local.run(QUESTION, context=context)
    assert ray.get(cluster.submit(t, QUESTION, context=context))[0].text == expected.text
    same, other = cluster.run_batch(t, [Query(QUESTION, {"context": context}), Query(QUESTION, {"context": "-"})])
    assert same.text == expected.text
    assert same.usage[0].prompt_tokens - other.usage[0].prompt_tokens == len(context) - 1  # byte tokens
    with pytest.raises(MissingFieldError, match=r"fields\.context: the template of agent 'planner'"):
        cluster.run(t, QUESTION)
    with pytest.raises(MissingFieldError, match="question 1"):  # the second lacks it
        cluster.run_batch(t, [Query(QUESTION, {"context": context}), QUESTION])


def test_backbones_are_shared_across_agents_and_topologies(cluster, model_dirs):
    for pattern in PATTERN_AGENTS:
        cluster.system(topology(model_dirs, pattern))
    assert len(cluster.backbone_actors) == 2  # two unique backbones, however many agents and topologies
    other = topology(model_dirs, "sequential", name="another-topology")
    cluster.run(other, QUESTION)
    assert len(cluster.backbone_actors) == 2
    pids = {info["pid"] for info in cluster.backbone_info()}
    assert len(pids) == 2


def test_concurrent_runs_are_batched_and_correct(cluster, model_dirs):
    t = topology(model_dirs, "mixture", name="cluster-batching")
    questions = [f"What is {i} + {i}?" for i in range(6)]
    expected = [cluster.run(t, q).text for q in questions]
    before = {k: len(v) for k, v in _batches(cluster).items()}
    refs = [cluster.submit(t, q) for q in questions]
    results = [r for ref in refs for r in ray.get(ref)]
    assert [r.text for r in results] == expected
    new = {k: v[before[k]:] for k, v in _batches(cluster).items()}
    assert max(size for sizes in new.values() for size in sizes) > 3, new  # requests of several runs coalesced


def _batches(cluster) -> dict:
    return {key: ray.get(actor.batch_sizes.remote()) for key, actor in cluster.backbone_actors.items()}


def test_run_batch_matches_single_runs(cluster, model_dirs):
    t = topology(model_dirs, "sequential")
    questions = [QUESTION, "What is 2+2?", "Name a prime."]
    assert [r.text for r in cluster.run_batch(t, questions, RunOptions(mode="text"))] == \
           [cluster.run(t, q, RunOptions(mode="text")).text for q in questions]


def test_gpu_request_beyond_the_cluster_fails_fast(cluster, model_dirs):
    t = topology(model_dirs, "distillation", name="needs-gpu",
                 backbones={"a": {"model": model_dirs["a"] + "-gpu", "num_gpus": 1}, "b": {"model": model_dirs["b"]}})
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        cluster.system(t)
    assert "backbones.a" in str(info.value) and "GPU=1" in str(info.value)
    assert time.monotonic() - start < 5


def test_unloadable_model_names_backbone_and_path(cluster, model_dirs, tmp_path):
    missing = str(tmp_path / "no-such-model")
    t = topology(model_dirs, "distillation", name="broken",
                 backbones={"a": {"model": model_dirs["a"]}, "b": {"model": missing}})
    with pytest.raises(OSError) as info:
        cluster.system(t)
    assert "backbone 'b'" in str(info.value) and missing in str(info.value)
    assert cluster.run(topology(model_dirs, "distillation"), QUESTION).text is not None  # the cluster still works


def test_same_name_other_definition_is_refused(cluster, model_dirs):
    cluster.system(topology(model_dirs, "sequential"))
    with pytest.raises(ValueError, match="already loaded"):
        cluster.system(topology(model_dirs, "sequential", latent_steps=5))


def _actor_of(cluster, model_dir):
    return next(actor for key, actor in cluster.backbone_actors.items() if key[0] == model_dir)


def test_a_run_survives_its_backbone_dying_once(cluster, model_dirs):
    t = topology(model_dirs, "sequential", name="fault", rounds=3, latent_steps=96,  # long enough to be killed
                 generation={"max_new_tokens": 64})                                  # mid-run (asserted below)
    expected = cluster.run(t, QUESTION).text
    victim = _actor_of(cluster, model_dirs["b"])
    pid = ray.get(victim.info.remote())["pid"]
    ref = cluster.submit(t, QUESTION)
    time.sleep(0.3)
    ray.kill(victim, no_restart=False)  # dies mid-run; Ray restarts it (max_restarts: 1)
    assert ray.get(ref)[0].text == expected  # the coordinator retried the run and got the same answer
    assert ray.get(cluster.system(t).coordinator.stats.remote())["retries"] == 1
    assert ray.get(victim.info.remote())["pid"] != pid  # a new process serves the backbone
    assert cluster.run(t, QUESTION).text == expected  # and later runs are fine


def test_a_backbone_that_stays_dead_fails_with_its_name(cluster, model_dirs, tmp_path):
    path = save_tiny(tmp_path / "fragile", "qwen2", chat=False, seed=3)
    t = topology(model_dirs, "distillation", name="fragile",
                 backbones={"a": {"model": model_dirs["a"]}, "b": {"model": path, "max_restarts": 0}})
    cluster.system(t)
    ray.kill(_actor_of(cluster, path))
    with pytest.raises(BackboneFailure) as info:
        cluster.run(t, QUESTION)
    assert "backbone 'b'" in str(info.value) and "Traceback" not in str(info.value)
    assert cluster.run(topology(model_dirs, "distillation"), QUESTION).text is not None  # others unaffected


def test_backbone_actor_threads_follow_the_topology(cluster, model_dirs):
    """num_cpus 0.25 reserves a quarter core, so the actor computes on 1 thread unless the topology asks for more."""
    t = topology(model_dirs, "sequential", name="threads",
                 backbones={"a": {"model": model_dirs["a"], "dtype": "bfloat16"},
                            "b": {"model": model_dirs["b"], "dtype": "bfloat16", "torch_threads": 2}})
    assert cluster.run(t, QUESTION).text is not None
    own = {key[0]: actor for key, actor in cluster.backbone_actors.items() if key[1] == "bfloat16"}
    threads = {path: ray.get(actor.info.remote())["torch_threads"] for path, actor in own.items()}
    assert threads == {model_dirs["a"]: 1, model_dirs["b"]: 2}


def test_gloo_direct_transport_moves_latents_and_gives_the_same_answer(cluster, model_dirs):
    t = topology(model_dirs, "sequential", name="direct-gloo", transport="gloo")
    expected = load_system(t).run(QUESTION).text
    assert cluster.run(t, QUESTION).text == expected
    own = {key: actor for key, actor in cluster.backbone_actors.items() if key[-1] == "direct-gloo"}
    assert len(own) == 2  # a collective group binds actors for life, so this topology has its own
    infos = ray.get([actor.info.remote() for actor in own.values()])
    # sequential, 2 rounds: planner->critic, critic->solver, solver->planner, planner->critic, critic->solver
    assert sum(i["direct_handoffs"] for i in infos) == 5
    assert all(i["stashed"] == 0 for i in infos)  # every stashed hand-off was picked up
