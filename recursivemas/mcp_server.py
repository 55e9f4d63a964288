"""``recursivemas mcp``: a recursive multi-agent system as tools for coding agents (Claude Code, opencode, any MCP
client), on the official ``mcp`` SDK's :class:`~mcp.server.mcpserver.MCPServer`.

Two tools: ``ask`` runs the topology on one question and returns the answer as text, with the run's numbers (mode,
finish reason, tokens and latent steps per agent) as structured content; ``list_topologies`` shows the topology in
use (agents, pattern, rounds), the built-in ones and, as a thin client, what the server serves. The runs happen in
this process or on a running ``recursivemas serve`` (:mod:`recursivemas.mcp_backends`). An argument no run could
take is an error result (``isError``) whose text names the argument, the value and the fix, the same words the CLI
and the HTTP API use (:class:`~recursivemas.errors.UserError`), so the calling agent can correct itself. Over stdio
(the default: what a coding agent spawns) or streamable HTTP (``--http``, at ``/mcp``).
"""

from __future__ import annotations

import sys
from typing import Annotated, Protocol

from pydantic import Field

from recursivemas import __version__
from recursivemas.config import Topology
from recursivemas.errors import UserError
from recursivemas.mcp_backends import MODES, AskRequest, AskResult, BackendError, Topologies

try:
    from mcp.server.mcpserver import MCPServer
    from mcp_types import CallToolResult, TextContent, ToolAnnotations
except ModuleNotFoundError as exc:  # no SDK, or a 1.x one (FastMCP): a RuntimeError is the CLI's one-line exit 2
    raise RuntimeError(f"recursivemas mcp needs the MCP SDK 2.x ({exc}); pip install 'recursivemas[mcp]' "
                       "(mcp>=2.3)") from exc

INSTRUCTIONS = (
    "recursivemas runs a recursive multi-agent system: several small LLM agents refine a shared answer over rounds, "
    "handing their thoughts on as latent vectors (mode latent) or as text (mode text); mode single asks the decoding "
    "agent alone. Call ask with a question; list_topologies shows the agents. Answers of an untrained or tiny "
    "system can be wrong: check them."
)


class Backend(Protocol):
    """What the tools need of where the runs happen (:mod:`recursivemas.mcp_backends`)."""

    name: str
    topology: Topology | None  # None: a served topology with no YAML here

    def ask(self, request: AskRequest) -> AskResult: ...

    def describe(self) -> Topologies: ...


def build_server(backend: Backend) -> MCPServer:
    """The MCP server answering with ``backend``; tests connect an SDK ``Client`` to it in process."""
    server = MCPServer("recursivemas", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    who = f" (agents {', '.join(a.name for a in backend.topology.agents)})" if backend.topology else ""

    @server.tool(description=f"Ask the recursive multi-agent system {backend.name!r}{who} one question; returns "
                             "its answer, and the mode, finish reason and tokens/latent steps per agent as structured "
                             "content. finish_reason length means the answer was cut off: ask with more max_tokens.",
                 annotations=ToolAnnotations(title="Ask the agents", read_only_hint=True, open_world_hint=False))
    def ask(
        question: Annotated[str, Field(description="the question or task, as you would ask one assistant")],
        context: Annotated[str | None, Field(description="text for the {context} field, for topologies whose "
                                                         "templates name it (list_topologies shows its fields)")]
        = None,
        mode: Annotated[str, Field(description="latent: agents hand thoughts on as latent vectors; text: as "
                                               "decoded text; single: the decoding agent alone",
                                   json_schema_extra={"enum": list(MODES)})] = "latent",
        rounds: Annotated[int | None, Field(description="refinement rounds (default: the topology's)",
                                            json_schema_extra={"minimum": 1})] = None,
        latent_steps: Annotated[int | None, Field(description="latent steps per thought (default: the topology's)",
                                                  json_schema_extra={"minimum": 0})] = None,
        max_tokens: Annotated[int | None, Field(description="most tokens the answer may have (default: the "
                                                            "topology's)", json_schema_extra={"minimum": 1})] = None,
    ) -> Annotated[CallToolResult, AskResult]:
        request = AskRequest(question, context, mode, rounds, latent_steps, max_tokens)
        try:
            result = backend.ask(request)
        except (UserError, BackendError) as exc:
            return error_result(exc)
        text = result.answer
        if result.finish_reason == "length":
            tokens = f"{result.answer_tokens} token{'' if result.answer_tokens == 1 else 's'}"
            text += (f"\n\n[cut off after {tokens} (finish_reason length); ask again with a larger max_tokens for "
                     "the whole answer]")
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content=result.model_dump(mode="json"))

    @server.tool(description="The topology ask runs (its agents, pattern, rounds, latent steps and fields), the "
                             "built-in topology names, and, on a recursivemas serve, the topologies it serves.",
                 annotations=ToolAnnotations(title="List topologies", read_only_hint=True, idempotent_hint=True,
                                             open_world_hint=False))
    def list_topologies() -> Annotated[CallToolResult, Topologies]:
        try:
            topologies = backend.describe()
        except (UserError, BackendError) as exc:
            return error_result(exc)
        return CallToolResult(content=[TextContent(type="text", text=topologies.model_dump_json(indent=2))],
                              structured_content=topologies.model_dump(mode="json"))

    return server


def error_result(exc: Exception) -> CallToolResult:
    """An error result the calling model reads: the message names the argument (``UserError.field``) and the fix."""
    return CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)


def serve_mcp(backend: Backend, http: bool = False, host: str = "127.0.0.1", port: int = 8765,
              allow_unauthenticated: bool = False) -> None:
    """Serve until the client hangs up (stdio) or Ctrl-C (HTTP). Over HTTP the endpoint has no authentication, so
    a non-loopback ``host`` is refused unless ``allow_unauthenticated`` (a firewall guards the port)."""
    from recursivemas.serve.auth import is_loopback

    server = build_server(backend)
    if not http:
        server.run("stdio")  # stdout is the protocol: the SDK sends stray prints (model loading) to stderr
        return
    if not is_loopback(host) and not allow_unauthenticated:
        raise UserError(f"--host {host}: not a loopback address, and the MCP endpoint has no authentication (anyone "
                        "who reaches it runs the models); keep --host 127.0.0.1, or pass --allow-unauthenticated "
                        "where a firewall guards the port", "--host")
    print(f"recursivemas MCP server ({backend.name}) on http://{host}:{port}/mcp (streamable HTTP); Ctrl-C stops",
          file=sys.stderr, flush=True)
    server.run("streamable-http", host=host, port=port)
