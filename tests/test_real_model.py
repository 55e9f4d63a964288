"""The real SmolLM2-135M from the offline zoo: latent and text modes both answer (slow: converts once, ~20 s)."""

from __future__ import annotations

import pytest

from recursivemas.config import Topology
from recursivemas.runtime import RunOptions, load_system

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def system():
    topology = Topology.model_validate({
        "name": "smol-sequential",
        "backbones": {"smol": {"model": "smollm2-135m-instruct"}},
        "agents": [{"name": n, "backbone": "smol"} for n in ("planner", "critic", "solver")],
        "pattern": "sequential", "rounds": 2, "latent_steps": 8,
        "generation": {"max_new_tokens": 24},
    })
    return load_system(topology)


@pytest.mark.parametrize("mode", ["latent", "text"])
def test_real_smollm2_answers(system, mode):
    result = system.run("What is 7 + 5? Answer with the number.", RunOptions(mode=mode))
    assert result.text.strip(), f"{mode} mode produced an empty answer"
    assert any(ch.isalnum() for ch in result.text)
    answer = [u for u in result.usage if u.kind == "answer"]
    assert len(answer) == 1 and answer[0].agent == "solver" and answer[0].decoded_tokens > 0
    if mode == "latent":
        assert result.totals.latent_steps == 8 * 5  # 3 agents x 2 rounds, minus the decoding turn
        assert result.totals.decoded_tokens == answer[0].decoded_tokens
    else:
        assert result.totals.latent_steps == 0
        assert result.totals.decoded_tokens > answer[0].decoded_tokens  # the messages were decoded too
