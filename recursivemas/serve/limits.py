"""What one request may ask of the server: sizes, budgets, queue depth and deadlines, checked at the front door."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """Server-side limits on what one request may ask for (413 for the body, 400 for the rest)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(1024, ge=1)
    max_rounds: int = Field(8, ge=1)
    max_latent_steps: int = Field(128, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1)
    max_messages: int = Field(64, ge=1)
    max_stop: int = Field(4, ge=0)
    max_queued: int = Field(64, ge=1)
    """Requests a router replica holds at once (running or waiting); past it, 503 with ``Retry-After``."""
    retry_after_s: int = Field(1, ge=0)
    timeout_s: float = Field(300.0, gt=0)
    """A request's deadline when it sets none: past it, 504 (its run is stopped, its batch-mates go on)."""
    max_timeout_s: float = Field(600.0, gt=0)
    """The longest deadline a request may ask for with the ``timeout_s`` extension (longer ones are capped)."""

    def deadline_s(self, asked: float | None) -> float:
        return min(self.timeout_s if asked is None else asked, self.max_timeout_s)
