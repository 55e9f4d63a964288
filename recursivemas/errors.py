"""Every error recursivemas raises on purpose, under one root, split by whose fault it is.

A :class:`UserError` is input the caller can fix: a config file, a run request, a dataset, a link checkpoint. Its
message names the field, the value and the fix, and ``field`` names the field for machines (an HTTP 400's
``param``). Anything else that escapes a run is the project's fault: the server answers it with a 500 that carries
the request id and no internal text, and logs the traceback. Internal invariant checks therefore raise plain
``ValueError``/``RuntimeError`` (or :class:`InternalError`), never a ``UserError``, so a bug is never reported
as the client's mistake.

Plain Python with no dependencies: the engine, the runtime and the servers all import it.
"""

from __future__ import annotations


class RecursiveMASError(Exception):
    """The root of the errors this package raises on purpose."""


class UserError(RecursiveMASError, ValueError):
    """Input the caller can fix (a 4xx); ``field`` names the field that is wrong, where one is.

    A ``ValueError`` too, so callers that caught ``ValueError`` before still do. It pickles with its field, so it
    crosses Ray (coordinator, Serve router) as itself."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def __reduce__(self):
        return (_rebuild, (type(self), str(self), self.field))


def _rebuild(cls: type[UserError], message: str, field: str | None) -> UserError:
    err = cls.__new__(cls)
    UserError.__init__(err, message, field)
    return err


class ConfigError(UserError):
    """A config file that cannot be used, with every problem named by its field."""


class RequestError(UserError):
    """A run request that cannot be run as asked: an empty question, an unknown mode or setting, a bad field."""


class MissingFieldError(RequestError):
    """A template names a field the question does not bring; the message names the agent, the field and the fix."""

    def __init__(self, message: str, field: str):
        super().__init__(message, field)


class ContextLengthError(RequestError):
    """A prompt (plus its latent steps or new tokens) does not fit the model's context window."""


class DataError(UserError):
    """Bad training data or target mapping; the message names the file/row, line, field and the fix."""


class LinkCheckpointError(UserError):
    """A link checkpoint is missing, malformed, or does not match the LinkSet it is loaded into."""


class ReleasedLinkError(UserError):
    """A released link file is unreadable, has unexpected keys, or disagrees with the other files."""


class InternalError(RecursiveMASError, RuntimeError):
    """A failure that is not the caller's: a backbone that died, a sandbox the host cannot provide."""


class SandboxUnavailable(InternalError):
    """No sandbox can run here, and the setting asks for one."""
