"""Links: the small trainable modules that carry latent states within and between agents.

``InnerLink`` maps an agent's last hidden state back into its own input-embedding space (latent rollout);
``OuterLink`` maps it into the next agent's space (hand-off). ``LinkSet`` holds all links of a topology,
``save_links``/``load_links`` persist it as safetensors plus a JSON manifest, and ``resolve_release`` finds
the links of the paper authors' released repositories and ``import_released`` reads their ``.pt`` files. Only
torch and safetensors are needed here.
"""

from .io import LinkCheckpointError, load_links, read_manifest, save_links, stored_dtype
from .linkset import LinkSet, edge_key, parse_edge_key
from .modules import InnerLink, OuterLink
from .release_manifests import resolve_release
from .release_weights import ReleasedLinkError, import_released

__all__ = [
    "InnerLink",
    "OuterLink",
    "LinkSet",
    "edge_key",
    "parse_edge_key",
    "save_links",
    "load_links",
    "read_manifest",
    "stored_dtype",
    "LinkCheckpointError",
    "import_released",
    "resolve_release",
    "ReleasedLinkError",
]
