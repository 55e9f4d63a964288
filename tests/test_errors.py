"""One error taxonomy: what the caller can fix is a UserError naming its field; everything else is internal, and the
server never reports it as the client's fault."""

from __future__ import annotations

import logging
import pickle
from types import SimpleNamespace

import pytest

from recursivemas import errors
from recursivemas.config import ConfigError, load_topology
from recursivemas.engine import ContextLengthError, Prompt
from recursivemas.links.io import LinkCheckpointError
from recursivemas.links.release_weights import ReleasedLinkError
from recursivemas.runtime import MissingFieldError, RunOptions
from recursivemas.runtime.calls import GenerateCall, GenerationOverrides
from recursivemas.runtime.sandbox import SandboxUnavailable
from recursivemas.serve.ingress import _as_api_error
from recursivemas.train.data import DataError

USER = [ConfigError, ContextLengthError, DataError, LinkCheckpointError, MissingFieldError, ReleasedLinkError,
        errors.RequestError]


@pytest.mark.parametrize("cls", USER)
def test_every_user_error_is_a_4xx_kind_with_its_field_and_crosses_pickling_as_itself(cls):
    err = cls("fields.context: the template names {context}; pass it", "context")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and back.field == "context" and str(back) == str(err)
    assert isinstance(back, errors.UserError) and isinstance(back, ValueError)  # old `except ValueError` still holds


def test_internal_errors_share_the_root_but_are_not_the_callers_fault():
    from recursivemas.actors.remote import BackboneFailure

    for cls in (SandboxUnavailable, BackboneFailure):
        assert issubclass(cls, errors.RecursiveMASError) and not issubclass(cls, errors.UserError)


def test_bad_run_settings_are_request_errors_that_name_the_setting():
    with pytest.raises(errors.RequestError) as caught:
        GenerationOverrides.of({"max_tokenz": 3})
    assert caught.value.field == "generation" and "max_tokenz" in str(caught.value)
    with pytest.raises(errors.RequestError) as caught:
        RunOptions.of({"round": 2})
    assert caught.value.field == "round"


def test_an_internal_invariant_failure_is_a_500_with_the_request_id_and_no_internal_text(caplog):
    with pytest.raises(ValueError) as caught:  # the typed call's own length check: a bug above it, not the client's
        GenerateCall((Prompt(["a"]), Prompt(["b"])), stream=True)
    wrapped = SimpleNamespace(cause=caught.value)  # as it arrives from the router, wrapped by Ray
    with caplog.at_level(logging.ERROR, logger="recursivemas"):
        err = _as_api_error(wrapped, "req-123")
    assert err.status == 500 and err.code == "internal_error" and "req-123" in err.message
    assert "GenerateCall" not in err.message and err.param is None
    assert any("req-123" in r.getMessage() and r.exc_info for r in caplog.records)  # logged with its traceback


def test_a_user_error_in_a_run_is_a_400_naming_its_field():
    topology = load_topology("sequential-demo")
    err = _as_api_error(errors.RequestError("rounds: must be >= 1, got 0", "rounds"), "req-1")
    assert (err.status, err.param) == (400, "rounds") and err.message.startswith("rounds:")
    err = _as_api_error(ContextLengthError(f"prompt of agent {topology.decoder!r} is too long"), "req-2")
    assert (err.status, err.param) == (400, "messages")
