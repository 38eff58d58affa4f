"""The spec's OpenAPI document for the client-server API, and checking bodies against it.

The document is `../shared/matrix-spec/client-server-api.json` beside the repository, or
`$MATRIX_SPEC`: bundled OpenAPI 3.1, every `$ref` inlined and every path prefixed with its
base path (`/_matrix/client/v3/...`). Bodies are checked with jsonschema.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = Path(os.environ.get("MATRIX_SPEC", REPO.parent / "shared" / "matrix-spec" / "client-server-api.json"))


@functools.cache
def openapi() -> dict:
    """The whole document (read once; do not modify it)."""
    if not SPEC.is_file():
        pytest.fail(f"the spec's OpenAPI document is missing: {SPEC} (set MATRIX_SPEC)", pytrace=False)
    return json.loads(SPEC.read_text())


def operation(path: str, method: str) -> dict:
    """The operation `method` (lower case) of `path`, as the document spells the path."""
    return openapi()["paths"][path][method]


def response_schema(path: str, method: str, status: str = "200") -> dict:
    """The JSON schema of an operation's answer with `status`."""
    response = operation(path, method)["responses"].get(status, {})
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    assert schema is not None, f"the spec gives no JSON body for {status} of {method.upper()} {path}"
    return schema


def validate(body: dict, schema: dict) -> None:
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
