"""Offline checks of ``compose.yaml``: Compose's variable interpolation and the Compose Specification's schema.

The schema is the one Docker Compose itself validates with, from the ``compose-go`` Go module at a pinned
version (``deploy.module_proxy``: downloaded once, cached). Compose interpolates ``${VAR}`` before it validates,
so ``validate`` does the same with the environment it is given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema.validators import validator_for

from deploy.module_proxy import module_file

COMPOSE_GO = "github.com/compose-spec/compose-go/v2"
COMPOSE_GO_VERSION = "v2.17.0"
SCHEMA_PATH = "schema/compose-spec.json"

# `$$` (a literal `$`), `${NAME}`, `${NAME<op>ARG}` with op one of :- - :? ? :+ +, `$NAME`; anything else after
# a `$` is an error, as in Compose.
_TOKEN = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


class InterpolationError(ValueError):
    """A required variable is missing (``${VAR:?message}``), or a ``$`` starts no valid reference."""


def _substitute(match: re.Match[str], env: Mapping[str, str]) -> str:
    if match.group("escaped"):
        return "$"
    if match.group("named"):
        return env.get(match.group("named"), "")
    name = match.group("braced")
    if name is None:
        raise InterpolationError(f"invalid interpolation format at {match.string[match.start() :]!r}")
    op, arg = match.group("op"), match.group("arg") or ""
    value = env.get(name)
    # The ':' forms treat an empty value like an unset one.
    present = value is not None and (value != "" or not (op or "").startswith(":"))
    if op is None:
        return value or ""
    kind = op[-1]
    if kind == "-":
        return value if present and value is not None else interpolate_text(arg, env)
    if kind == "?":
        if not present or value is None:
            raise InterpolationError(f"required variable {name} is missing a value: {arg}")
        return value
    return interpolate_text(arg, env) if present else ""  # "+": the alternative when set


def interpolate_text(text: str, env: Mapping[str, str]) -> str:
    return _TOKEN.sub(lambda match: _substitute(match, env), text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Every string value of a loaded compose file interpolated with ``env`` (keys are left as they are)."""
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def load(path: Path) -> dict[str, Any]:
    """The compose file as YAML data (anchors and ``<<`` merge keys resolved), not yet interpolated."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a YAML mapping")
    return data


def schema() -> dict[str, Any]:
    data = json.loads(module_file(COMPOSE_GO, COMPOSE_GO_VERSION, SCHEMA_PATH))
    if not isinstance(data, dict):
        raise ValueError(f"{SCHEMA_PATH} of {COMPOSE_GO}@{COMPOSE_GO_VERSION} is not a JSON object")
    return data


def schema_errors(document: Mapping[str, Any], spec: Mapping[str, Any]) -> list[str]:
    """Every violation of ``spec`` (validated with the JSON Schema draft it declares), as ``path: message``."""
    validator_class = validator_for(spec)
    validator_class.check_schema(spec)
    validator = validator_class(spec)
    return sorted(
        f"{'/'.join(str(part) for part in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    )


def validate(path: Path, env: Mapping[str, str]) -> list[str]:
    """Schema violations of the compose file at ``path`` once interpolated with ``env`` (empty: valid)."""
    return schema_errors(interpolate(load(path), env), schema())
