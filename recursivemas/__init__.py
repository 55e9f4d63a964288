"""recursivemas: run, train and serve recursive multi-agent systems whose agents talk in latent space."""

from recursivemas.config import Topology, load_topology
from recursivemas.runtime import Executor, RunResult, load_system

__all__ = ["Executor", "RunResult", "Topology", "load_system", "load_topology"]
__version__ = "0.1.0"
