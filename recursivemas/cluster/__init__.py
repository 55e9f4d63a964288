"""Ray lives here: backbone actors, coordinators, and the ``Cluster`` that places them."""

import os

# Ray reads this once, at import: without it a local Ray binds to the machine's eth0 address instead of 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from recursivemas.cluster.cluster import Cluster  # noqa: E402
from recursivemas.actors.coordinator import BackboneFailure  # noqa: E402

__all__ = ["BackboneFailure", "Cluster"]
