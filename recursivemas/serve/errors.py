"""OpenAI-style errors: what a bad request (4xx) or a failed run (5xx) answers, over HTTP and gRPC alike."""

from __future__ import annotations

import uuid

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "timeout_error"}


class APIError(Exception):
    """A request that gets an OpenAI-style error: HTTP ``status``, OpenAI ``type``, ``message``, ``param``, ``code``."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds, for the Retry-After header of a 503

    def __reduce__(self):  # raised in the router, read in the ingress: it crosses Ray pickled
        return _rebuild, (self.status, self.message, self.type, self.param, self.code, self.retry_after)

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)} if self.retry_after is not None else {}

    def __repr__(self) -> str:
        return (f"APIError({self.status}, {self.message!r}, type={self.type!r}, param={self.param!r}, "
                f"code={self.code!r})")

    @classmethod
    def internal(cls, request_id: str) -> APIError:
        """A 500 for an unexpected failure: no internals in the message, only the id to find it in the logs."""
        return cls(500, f"The server failed while running this request and is still serving others; retry, or "
                        f"report request id {request_id}.", code="internal_error")

    @classmethod
    def context_length(cls, prompt_tokens: int, context: int, max_tokens: int, agent: str = "") -> APIError:
        """A 400 for a prompt that does not fit the context with ``max_tokens`` to generate."""
        who = f" of agent {agent!r}" if agent else ""
        return cls(400, f"messages: the prompt{who} is {prompt_tokens} tokens and max_tokens is {max_tokens}, "
                        f"{prompt_tokens + max_tokens} in all, over the model's context of {context} tokens. "
                        f"Shorten the messages or lower max_tokens.", param="messages", code="context_length_exceeded")


def _rebuild(status, message, type, param, code, retry_after) -> APIError:
    return APIError(status, message, type=type, param=param, code=code, retry_after=retry_after)


def overloaded(queued: int, retry_after: int) -> APIError:
    return APIError(503, f"The server is at its limit of {queued} requests in flight; retry in {retry_after} s.",
                    code="overloaded", retry_after=retry_after)


def deadline_exceeded(request_id: str, seconds: float) -> APIError:
    return APIError(504, f"The request did not finish within its deadline of {seconds:g} s and was stopped; ask "
                         f"for less (max_tokens, rounds), a longer timeout_s, or report request id {request_id}.",
                    code="timeout")


def error_body(err: APIError, request_id: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code", "request_id"}}``, OpenAI's error object plus the request id.

    The HTTP layer should also send the id as the ``x-request-id`` header (the ``openai`` client reads it there).
    """
    body = {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    if request_id is not None:
        body["request_id"] = request_id
    return {"error": body}


def new_request_id() -> str:
    return uuid.uuid4().hex
