"""A request body's bytes to JSON, refusing what would hurt the code after it: over the size limit, empty, not
UTF-8, not JSON (NaN and Infinity included), nested past what recursive code survives, or holding a lone surrogate
that no response could encode back. Each refusal is a 4xx :class:`APIError`; HTTP decodes here, gRPC does not."""

from __future__ import annotations

import json
from typing import Any

from recursivemas.serve.errors import APIError


def _reject_nan(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


MAX_NESTING = 32
"""Arrays and objects inside each other in a request body, at most (a valid body nests 5 deep). Deeper bodies are
refused before any recursive code (pydantic, the error text's ``json.dumps``) sees them: near Python's recursion
limit, those hit it first, and the RecursionError was a 500."""


def _nesting(value: Any) -> int:
    """How deep arrays and objects nest in ``value`` (0 for a scalar), without recursion; stops past MAX_NESTING."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_NESTING:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def decode_body(body: bytes, max_body_bytes: int) -> Any:
    """The decoded JSON value of a raw request body (any JSON value: the caller checks it is an object)."""
    if len(body) > max_body_bytes:
        raise APIError(413, f"The request body is {len(body)} bytes, over the limit of {max_body_bytes}. "
                            "Send fewer or shorter messages.", code="request_too_large")
    if not body.strip():
        raise APIError(400, "The request body is empty. Send a JSON object with model and messages.",
                       code="invalid_json")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_nan)
    except UnicodeDecodeError as e:
        raise APIError(400, f"The request body is not UTF-8 ({e.reason} at byte {e.start}). Send UTF-8 JSON.",
                       code="invalid_json") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, NaN/Infinity, too many digits, too deep
        raise APIError(400, f"The request body is not valid JSON: {e}. Send a JSON object with model and "
                            "messages.", code="invalid_json") from None
    if _nesting(data) > MAX_NESTING:
        raise APIError(400, f"The request body is nested too deeply (over {MAX_NESTING} levels of arrays and "
                            "objects). Send a JSON object with model and messages.", code="invalid_json")
    try:  # a \ud800 escape decodes to a lone surrogate, which no response could encode back to UTF-8
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise APIError(400, "The request body is nested too deeply. Send a JSON object with model and messages.",
                       code="invalid_json") from None
    except UnicodeEncodeError:
        raise APIError(400, "The request body has a \\u escape of a lone surrogate (half a UTF-16 pair), which is "
                            "not a character. Send valid Unicode text.", code="invalid_json") from None
    return data
