"""Serving a topology: an OpenAI-compatible HTTP API and gRPC, on Ray Serve.

Importing this package imports neither Ray nor a web framework: ``recursivemas.serve.openai_api`` is the pure
request/response logic (validation, errors, response and stream bodies) and ``recursivemas.serve.proto`` holds the
gRPC interface with its generated stubs.
"""
