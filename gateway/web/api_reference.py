"""The API reference page at ``<schema path>/``: the OpenAPI document rendered on the server.

Litestar's viewers (Redoc, Swagger UI, Scalar, …) load their script and fonts from CDNs and start with
an inline script: blank offline, blank under the pages' Content-Security-Policy (no inline script, no
external origin), and a third-party script on the gateway's own origin. This page needs neither: it
is HTML from the same Jinja templates as every other page, and the machine-readable schema stays at
``openapi.json`` and ``openapi.yaml`` beside it for tools (code generators, Postman, a local Redoc).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from jinja2 import Environment, FileSystemLoader
from litestar.enums import MediaType
from litestar.openapi.plugins import OpenAPIRenderPlugin

if TYPE_CHECKING:
    from litestar.connection import Request

__all__ = ["Field", "Operation", "ReferencePage", "SchemaView", "reference_of"]

_METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_REF_PREFIX: Final = "#/components/schemas/"
_TEMPLATES: Final = Path(__file__).parent / "templates"


@dataclass(frozen=True, slots=True)
class Field:
    """One parameter or property: its name, where it goes, its type in words, whether required."""

    name: str
    where: str
    type: str
    required: bool
    description: str = ""


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path."""

    method: str
    path: str
    summary: str
    description: str
    parameters: tuple[Field, ...]
    body: str
    responses: tuple[tuple[str, str], ...]

    @property
    def anchor(self) -> str:
        return f"op-{self.method.lower()}-" + "".join(c if c.isalnum() else "-" for c in self.path).strip("-")


@dataclass(frozen=True, slots=True)
class SchemaView:
    """A named component schema and its properties."""

    name: str
    description: str
    fields: tuple[Field, ...]


def type_name(schema: Mapping[str, Any] | None) -> str:
    """A short human description of a JSON schema: ``string``, ``array of Session``, ``A | null``."""
    if not schema:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.removeprefix(_REF_PREFIX)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return " | ".join(type_name(part) for part in schema[key])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {type_name(schema.get('items'))}"
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    if kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        return f"object of {type_name(schema['additionalProperties'])}"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if kind and fmt else str(kind or "any")


def _parameters(raw: list[Mapping[str, Any]]) -> tuple[Field, ...]:
    return tuple(
        Field(
            name=str(p.get("name", "")),
            where=str(p.get("in", "")),
            type=type_name(p.get("schema")),
            required=bool(p.get("required")),
            description=str(p.get("description", "")),
        )
        for p in raw
    )


def _body(raw: Mapping[str, Any] | None) -> str:
    if not raw:
        return ""
    content: Mapping[str, Any] = raw.get("content") or {}
    return "; ".join(f"{media}: {type_name(spec.get('schema'))}" for media, spec in content.items())


def _operation(method: str, path: str, op: Mapping[str, Any]) -> Operation:
    responses = op.get("responses") or {}
    return Operation(
        method=method.upper(),
        path=path,
        summary=str(op.get("summary", "")),
        description=str(op.get("description", "")),
        parameters=_parameters(list(op.get("parameters") or ())),
        body=_body(op.get("requestBody")),
        responses=tuple((str(code), str(spec.get("description", ""))) for code, spec in responses.items()),
    )


def _schema(name: str, schema: Mapping[str, Any]) -> SchemaView:
    required = set(schema.get("required") or ())
    properties: Mapping[str, Any] = schema.get("properties") or {}
    return SchemaView(
        name=name,
        description=str(schema.get("description", "")),
        fields=tuple(
            Field(name=prop, where="", type=type_name(spec), required=prop in required)
            for prop, spec in properties.items()
        ),
    )


def reference_of(openapi: Mapping[str, Any]) -> dict[str, Any]:
    """The template context for an OpenAPI document (a plain dict, as Litestar hands it over)."""
    operations = [
        _operation(method, path, item[method])
        for path, item in sorted((openapi.get("paths") or {}).items())
        for method in _METHODS
        if method in item
    ]
    schemas = (openapi.get("components") or {}).get("schemas") or {}
    info = openapi.get("info") or {}
    return {
        "title": str(info.get("title", "API")),
        "version": str(info.get("version", "")),
        "description": str(info.get("description", "")),
        "operations": operations,
        "schemas": [_schema(name, spec) for name, spec in sorted(schemas.items())],
    }


class ReferencePage(OpenAPIRenderPlugin):
    """Litestar render plugin: the reference page, from the gateway's page templates.

    It brings its own template environment, so an app without templates (the admin listener) can
    serve it too; there it is unstyled, as that listener serves no static files.
    """

    def __init__(self, *, path: str = "/", template: str = "api_reference.html") -> None:
        """Serve the page at ``path`` under the OpenAPI path, from ``template``."""
        super().__init__(path=path, media_type=MediaType.HTML)
        # autoescape: every value on the page comes from the OpenAPI document (docstrings included).
        self._template = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=True).get_template(
            template
        )

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """Render the page for this request (its request id in the footer)."""
        context = reference_of(openapi_schema)
        context.update(
            request_id=request.headers.get("x-request-id", ""),
            user=None,
            base=request.url.path.rstrip("/"),
        )
        return self._template.render(**context).encode()
