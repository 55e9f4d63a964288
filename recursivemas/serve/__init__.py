"""Serving a topology: an OpenAI-compatible HTTP API and gRPC, on Ray Serve.

Importing this package imports neither Ray nor a web framework: ``openai_api`` (requests), ``openai_responses``
(response and stream bodies) and ``errors`` are pure logic; ``proto`` holds the gRPC interface and its stubs.
"""
