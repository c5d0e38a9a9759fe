"""Keep secrets out of every log line and error message, even ones cdc did not write.

DSNs, passwords and tokens are `SecretStr` in the config (redacted in ``repr``) and cdc
never binds them to a log event. But a driver's error text can quote what it was given
(libpq echoes a malformed connection string), so as a second line of defence the CLI
registers every secret of the loaded config here, and a structlog processor and the
CLI's error printer replace any occurrence with ``***``. Besides each secret value whole,
the password inside a DSN or URL is registered on its own (when at least
`MIN_SECRET_LENGTH` characters long, so that a toy password such as ``x`` does not blank
out ordinary words).
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel, SecretStr

MIN_SECRET_LENGTH = 4
MASK = "***"

_secrets: set[str] = set()


def secrets_of(model: BaseModel) -> set[str]:
    """Every `SecretStr` value in `model` (recursively), and the password inside each DSN or URL."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
            found.add(text)
            found.update(_embedded_passwords(text))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(model)
    return {s for s in found if len(s) >= MIN_SECRET_LENGTH}


def _embedded_passwords(text: str) -> set[str]:
    out: set[str] = set()
    if "://" in text:
        try:
            password = urlsplit(text).password
        except ValueError:
            password = None
        if password:
            out.update({password, unquote(password)})
    try:
        embedded = conninfo_to_dict(text).get("password")
    except Exception:  # not a libpq string: nothing more to find
        embedded = None
    if isinstance(embedded, str) and embedded:
        out.add(embedded)
    return out


def register(values: Iterable[str]) -> None:
    """Mask these strings in every log event and CLI error from now on."""
    _secrets.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    """`text` with every registered secret replaced by ``***`` (longest first)."""
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_processor(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: mask registered secrets in every value of the event (and its traceback)."""
    if not _secrets:
        return event
    for key, value in event.items():
        event[key] = _scrub(value)
    return event
