"""recursivemas: run, train and serve recursive multi-agent systems whose agents talk in latent space."""

from recursivemas import _quiet  # noqa: F401  first: drops warnings nobody can act on (DeepSpeed's "no GPU" notice)
from recursivemas.config import Topology, load_topology
from recursivemas.runtime import Executor, Query, RunOptions, RunResult, load_system

__all__ = ["Cluster", "Executor", "Query", "RunOptions", "RunResult", "Topology", "load_system", "load_topology"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``recursivemas.Cluster`` imports Ray only when asked for, so the engine runs where Ray is not installed."""
    if name == "Cluster":
        from recursivemas.cluster import Cluster

        return Cluster
    raise AttributeError(f"module 'recursivemas' has no attribute {name!r}")
