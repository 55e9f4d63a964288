"""The one YAML-to-pydantic loader every config file goes through (topologies, train and serve configs), and the
validation messages it gives: one line per problem, field first, a "did you mean" for a typo'd key."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from recursivemas.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load_yaml_config(path: Path, model: type[M], what: str, keys: str, missing_hint: str = "",
                     empty_ok: bool = False) -> M:
    """The one YAML-to-pydantic loader (topologies, train and serve configs): every failure is a
    :class:`ConfigError` that names the file, then each bad field with a "did you mean" for a typo'd key."""
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist{missing_hint}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None and empty_ok:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with {keys}; got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {what}\n{format_validation_error(exc, model)}") from None


def format_validation_error(exc: ValidationError, root: type[BaseModel] | None = None) -> str:
    """One line per problem, field first, then the bad value where it is a plain one (never for a ``root`` that
    hides its inputs in errors, as the serve config does: a value may be an API key); a typo'd key gets a "did you
    mean" from the model's own fields."""
    lines = []
    echo = root is not None and not root.model_config.get("hide_input_in_errors")  # a serve config may hold keys
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key{_suggest(err['loc'], root) if root is not None else ''}"
        elif echo and loc and isinstance(value, (str, int, float)) and len(repr(value)) <= 80 \
                and repr(value) not in msg:
            msg += f" (got {value!r})"  # the bad value itself, e.g. stop_tokens: ... (got 'tokenize')
        lines.append(f"  - {loc + ': ' if loc else ''}{msg}")
    return "\n".join(lines)


def _suggest(loc: tuple, model: type[BaseModel]) -> str:
    """Look the bad key up among the fields of the model it was found in (walking down from ``model``)."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None) if field else None
        inner = getattr(annotation, "__args__", None) or (annotation,)
        found = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if field is not None and found:
            model = found[-1]
        elif field is not None:
            return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys are {sorted(model.model_fields)}"
