"""Secrets never leave a shard: values of secret-named variables masked in every form a report or log can hold."""

from __future__ import annotations

import html
import json

SECRET_MARKS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH", "COOKIE", "SESSION")


def is_secret(name: str) -> bool:
    """Variables named like secrets: their values never reach a log or a report."""
    return any(mark in name.upper() for mark in SECRET_MARKS)


def secret_forms(value: str) -> list[bytes]:
    """Every form a secret value can take in what a shard writes: as is (UTF-8), XML-escaped (JUnit; with and
    without quote escapes, and with non-ASCII as character references), JSON-escaped (the plugin's records, with
    and without ``ensure_ascii``), and Python's repr (assertion rewrites, tracebacks)."""
    forms = {
        value,
        html.escape(value, quote=False),
        html.escape(value, quote=True),
        html.escape(value, quote=True).replace("&#x27;", "&apos;"),
        value.encode("ascii", "xmlcharrefreplace").decode(),
        html.escape(value).encode("ascii", "xmlcharrefreplace").decode(),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        repr(value)[1:-1],
        ascii(value)[1:-1],
    }
    # longest first, so that a form containing another is replaced whole
    return sorted({f.encode() for f in forms if f}, key=len, reverse=True)


def _mask_strings(value: object, forms: list[str]) -> object:
    if isinstance(value, str):
        for form in forms:
            value = value.replace(form, "***")
        return value
    if isinstance(value, list):
        return [_mask_strings(v, forms) for v in value]
    if isinstance(value, dict):
        return {k: _mask_strings(v, forms) for k, v in value.items()}
    return value


def mask_report(data: bytes, env: tuple[tuple[str, str], ...]) -> bytes:
    """``mask_secrets`` for the plugin's JSON lines: each record's strings are masked once decoded, so that a form
    of a secret escaped again by the record's own JSON (a test that printed ``json.dumps(token)``) is caught too."""
    values = [value for name, value in env if is_secret(name) and len(value) >= 4]
    if not values:
        return data
    forms = sorted({f.decode() for v in values for f in secret_forms(v)}, key=len, reverse=True)
    lines = []
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:  # not a record (cut by a kill, or written by the tests): masked as bytes
            lines.append(mask_secrets(line, env))
            continue
        lines.append(mask_secrets(json.dumps(_mask_strings(record, forms)).encode(), env))
    return b"\n".join(lines)


def mask_secrets(data: bytes, env: tuple[tuple[str, str], ...]) -> bytes:
    """Replace the values of secret-named variables, in each of their escaped forms, by *** in output that will
    be stored or shown."""
    for name, value in env:
        if is_secret(name) and len(value) >= 4:
            for form in secret_forms(value):
                data = data.replace(form, b"***")
    return data
