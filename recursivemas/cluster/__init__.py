"""Ray lives here: backbone actors, coordinators, and the ``Cluster`` that places them."""

from recursivemas.cluster.cluster import Cluster
from recursivemas.cluster.coordinator import BackboneFailure

__all__ = ["BackboneFailure", "Cluster"]
