"""MkDocs hook: the HTTP reference is the OpenAPI spec of the FastAPI app, generated at build time.

The spec comes from ``create_app`` itself (the routes, their parameters, every status each declares and the
body schemas), never from a hand-written copy: it is written to the site as ``reference/openapi.json`` and
rendered as Markdown where a page holds the marker below. The app is built with a factory that is never
called, so no model or store is loaded.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "<!-- generated: openapi -->"
SPEC_URI = "reference/openapi.json"
_spec: dict[str, Any] = {}


def build_spec() -> dict[str, Any]:
    """The service's OpenAPI document, as ``GET /openapi.json`` serves it."""
    from id2_plugin.adapters.http import create_app

    def never_called() -> None:  # the lifespan that would call it does not run without a server
        raise AssertionError("the docs build must not load a model")

    return create_app(never_called).openapi()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _type(schema: dict[str, Any]) -> str:
    """A schema as a short type: ``integer``, ``array of [MatchBody](#matchbody)``, ``string | null``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " \\| ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    extra = [f"{k} {schema[k]}" for k in ("format", "minimum", "maximum") if k in schema]
    return kind + (f" ({', '.join(extra)})" if extra else "")


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    out = [f"### `{method.upper()} {path}`\n", f"**{op.get('summary', '')}**\n"]
    if op.get("description"):
        out.append(op["description"].strip() + "\n")
    if op.get("security"):
        schemes = ", ".join(name for req in op["security"] for name in req)
        out.append(f"Authorisation: `{schemes}` (bearer token, `serve.token` or `ID2_SERVE_TOKEN`).\n")
    if op.get("parameters"):
        out.append("| parameter | in | type | required | description |\n|---|---|---|---|---|")
        for p in op["parameters"]:
            out.append(
                f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | "
                f"{'yes' if p.get('required') else 'no'} | {_cell(p.get('description', ''))} |"
            )
        out.append("")
    body = op.get("requestBody")
    if body:
        kinds = ", ".join(f"`{c}`" for c in body.get("content", {}))
        out.append(f"Request body ({'required' if body.get('required') else 'optional'}): {kinds}.\n")
        form = body.get("content", {}).get("multipart/form-data", {}).get("schema", {})
        if form.get("properties"):
            out.append("| form field | type | required |\n|---|---|---|")
            for name, s in form["properties"].items():
                out.append(f"| `{name}` | {_type(s)} | {'yes' if name in form.get('required', []) else 'no'} |")
            out.append("")
    out.append("| status | meaning | body |\n|---|---|---|")
    for status, resp in op.get("responses", {}).items():
        bodies = ", ".join(
            f"`{kind}` {_type(c.get('schema', {}))}".rstrip() for kind, c in resp.get("content", {}).items()
        )
        headers = ", ".join(f"header `{h}`" for h in resp.get("headers", {}))
        shapes = ", ".join(x for x in (bodies, headers) if x)
        out.append(f"| {status} | {_cell(resp.get('description', ''))} | {shapes} |")
    return "\n".join(out) + "\n"


def _schema(name: str, schema: dict[str, Any]) -> str:
    out = [f"### {name}\n"]
    if schema.get("description"):
        out.append(_cell(schema["description"]) + "\n")
    props = schema.get("properties", {})
    if props:
        out.append("| field | type | required | description |\n|---|---|---|---|")
        for field, s in props.items():
            out.append(
                f"| `{field}` | {_type(s)} | {'yes' if field in schema.get('required', []) else 'no'} | "
                f"{_cell(s.get('description', ''))} |"
            )
    return "\n".join(out) + "\n"


def spec_markdown(spec: dict[str, Any]) -> str:
    """The routes (each with its parameters, body and every declared status) and then the body schemas."""
    info = spec["info"]
    out = [
        f"OpenAPI {spec['openapi']}, `{info['title']}` {info['version']}: {info.get('description', '')} "
        f"The whole document: [openapi.json](openapi.json).\n",
        "## Routes\n",
    ]
    for path, methods in spec["paths"].items():
        out.extend(_operation(method, path, op) for method, op in methods.items())
    out.append("## Bodies\n")
    out.extend(_schema(name, s) for name, s in spec.get("components", {}).get("schemas", {}).items())
    return "\n".join(out)


def on_files(files, config):
    from mkdocs.structure.files import File

    _spec.clear()
    _spec.update(build_spec())
    files.append(File.generated(config, SPEC_URI, content=json.dumps(_spec, indent=2)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, spec_markdown(_spec))
