"""The Ray actors: one per unique backbone (over a Ray-free host), one coordinator per topology, and the one
remote backend through which an executor reaches a backbone that runs elsewhere. The cluster and Serve layers both
build on these, side by side."""

from recursivemas.actors.remote import BackboneFailure, RemoteBackend

__all__ = ["BackboneFailure", "RemoteBackend"]
