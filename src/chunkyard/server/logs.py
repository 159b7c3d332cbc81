"""Keep secrets out of what the gateway prints.

Logs end up in journald, CI artifacts and support tickets, so nothing that grants
access may appear in them: bearer tokens, passwords in URLs, the signatures of
presigned URLs (uvicorn's access log prints every signed blob URL it serves), store
keys. :func:`redact` masks them in a line of text; :class:`RedactFilter` applies it
to every log record a handler emits (message, arguments and traceback), and
:func:`install` puts that filter on the handlers the gateway logs through.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

MASK = "***"

#: query parameters whose value grants access: the local store's HMAC ``sig``, S3
#: SigV4, GCS V4 (and V2 ``Signature``), Azure SAS ``sig``, OAuth-style tokens
SECRET_PARAMS = (
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "token",
    "access_token",
)
_PARAM_NAMES = "|".join(re.escape(p) for p in sorted(SECRET_PARAMS, key=len, reverse=True))

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # connection-string fields: the whole value, up to the next ``;``
    (
        re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s'\"]+"),
        rf"\1={MASK}",
    ),
    # the password of a URL's userinfo: scheme://user:PASSWORD@host
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s/?#@:]*:)[^\s@]+(?=@)"), rf"\1{MASK}"),
    # query or form parameters: ?sig=…, &X-Amz-Signature=…, "Signature=…" in a header
    (re.compile(rf"(?i)(?<![\w-])((?:{_PARAM_NAMES})=)[^&\s#'\",;<>\x00-\x1f]+"), rf"\1{MASK}"),
    # the same names as keys of a dict or JSON object: 'sig': '…'
    (
        re.compile(
            rf"(?i)(['\"](?:{_PARAM_NAMES}|authorization|password)['\"]\s*:\s*['\"])[^'\"]*"
        ),
        rf"\1{MASK}",
    ),
    # Authorization: Bearer …, and bearer tokens anywhere else
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/\-]+=*"), rf"\1{MASK}"),
    # any other Authorization value (Basic, SharedKey, AWS4-HMAC-SHA256 Credential=…)
    (
        re.compile(
            r"(?i)(\bauthorization['\"]?\s*[:=]\s*['\"]?)(?!bearer\b)(?!\*)[^'\"\s,}][^'\"\r\n,}]*"
        ),
        rf"\1{MASK}",
    ),
    # chunkyard's own API tokens: cy_ and 43 url-safe base64 characters
    (re.compile(r"(?<![A-Za-z0-9_-])cy_[A-Za-z0-9_-]{16,}"), f"cy_{MASK}"),
    # NAME=value where the name says secret: AWS_SECRET_ACCESS_KEY=…, password=…
    (
        re.compile(
            r"(?i)\b([a-z0-9_]*(?:secret|password|passwd|session_token)[a-z0-9_]*"
            r"['\"]?\s*[=:]\s*['\"]?)[^\s'\",;&]+"
        ),
        rf"\1{MASK}",
    ),
)

#: environment variables whose values are secrets wherever they turn up
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GCS_HMAC_SECRET",
    "CHUNKYARD_SECRET",
    "AZURE_STORAGE_KEY",
)
#: values shorter than this are not masked verbatim: they would match ordinary text
_MIN_KNOWN = 8
_known: tuple[str, ...] = ()


def remember(*values: str | bytes | None) -> None:
    """Mask these exact values too (a store key, the signing secret): the patterns
    cannot recognise a bare 40-character key, but its value is known at start-up."""
    global _known
    new = set(_known)
    for v in values:
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
        if v and len(v) >= _MIN_KNOWN:
            new.add(v)
    # longest first, so that a secret containing another is masked whole
    _known = tuple(sorted(new, key=len, reverse=True))


def remember_environment(env: dict[str, str] | None = None) -> None:
    """Remember the secrets the environment holds: store keys, the password in
    CHUNKYARD_DB, the account key in AZURE_STORAGE_CONNECTION_STRING."""
    env = dict(os.environ if env is None else env)
    values: list[str | None] = [env.get(name) for name in SECRET_ENV]
    for name in ("CHUNKYARD_DB", "CHUNKYARD_STORE"):
        with contextlib.suppress(ValueError):
            values.append(urlsplit(env.get(name, "")).password)
    for field in env.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";"):
        key, _, value = field.partition("=")
        if key.strip().lower() in ("accountkey", "sharedaccesssignature", "sharedaccesskey"):
            values.append(value)
    remember(*values)


def redact(text: str) -> str:
    """``text`` with every secret it holds replaced by ``***``; the rest (hosts,
    paths, parameter names) kept, so the line still says what happened."""
    for value in _known:
        if value in text:
            text = text.replace(value, MASK)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _redact_arg(arg: Any) -> Any:
    return redact(arg) if isinstance(arg, str) else arg


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place, before any formatter sees it. Most records are
    rendered now (message % args) and the result redacted, since a secret may sit in
    an argument of any type. uvicorn's access records keep their argument tuple, which
    its formatter unpacks: each argument is redacted instead (the path carries the
    query string)."""
    if record.name == "uvicorn.access" and isinstance(record.args, tuple):
        record.args = tuple(_redact_arg(a) for a in record.args)
    else:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: redact what there is
            message = f"{record.msg} {record.args!r}"
        if "color_message" in record.__dict__:  # uvicorn's coloured copy of the message
            try:
                colored = str(record.__dict__["color_message"]) % (record.args or ())
            except Exception:
                colored = message
            record.__dict__["color_message"] = redact(colored)
        record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactFilter(logging.Filter):
    """A handler filter that redacts every record and drops none. On handlers rather
    than loggers: a logger's filters see only records logged on that very logger,
    not those its children propagate."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


#: the loggers whose handlers the gateway's output goes through
GATEWAY_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def install(secrets: Iterable[str | bytes] = ()) -> None:
    """Put a :class:`RedactFilter` on every handler of the gateway's loggers (and on
    logging's last-resort handler, which prints records when no handler is set), and
    remember the environment's secrets and ``secrets``. Idempotent; called when the
    gateway starts, after uvicorn has configured its handlers, in every worker."""
    remember_environment()
    remember(*secrets)
    handlers = [h for name in GATEWAY_LOGGERS for h in logging.getLogger(name).handlers]
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's logging configuration with a :class:`RedactFilter` on each handler,
    and a handler for the root logger (the gateway's own warnings and errors) that
    redacts too. A dict, so uvicorn applies it in each worker process it starts."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": f"{__name__}.RedactFilter"}}
    config["formatters"]["named"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
    }
    config["handlers"]["named"] = {
        "formatter": "named",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact"]
    config["root"] = {"handlers": ["named"], "level": "WARNING"}
    return config


# -- structured logs ---------------------------------------------------------------------
#: the id of the request being served, set by :class:`~chunkyard.server.observe.Observe`
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chunkyard_request_id", default=None
)
#: one record per request answered, at INFO (emitted in the ``json`` format, where
#: it replaces uvicorn's access log, which cannot know the request id)
access = logging.getLogger("chunkyard.access")
#: record attributes that :class:`JsonFormatter` copies into its object when present
ACCESS_FIELDS = ("method", "path", "route", "status", "duration_ms", "bytes_in", "bytes_out")
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message,
    request_id when in a request, the access fields, and the traceback if any. Runs
    after :class:`RedactFilter`, so every string in it is redacted already."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = record.__dict__.get("request_id") or REQUEST_ID.get()
        if rid:
            out["request_id"] = rid
        for name in ACCESS_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(self.formatException(record.exc_info))
        if record.exc_text:
            out["traceback"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


def log_config(fmt: str = "text") -> dict[str, Any]:
    """:func:`uvicorn_log_config` in ``fmt``: ``json`` puts every handler on
    :class:`JsonFormatter` and emits ``chunkyard.access`` instead of uvicorn's access
    log (``serve`` then turns that one off)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    config = uvicorn_log_config()
    if fmt == "json":
        config["formatters"] = {"json": {"()": f"{__name__}.JsonFormatter"}}
        for handler in config["handlers"].values():
            handler["formatter"] = "json"
        config["loggers"]["chunkyard.access"] = {
            "handlers": ["named"],
            "level": "INFO",
            "propagate": False,
        }
    return config


def configure(level: int = logging.WARNING) -> None:
    """Log to stderr through the redacting filter: for commands that run without
    uvicorn (the verifier)."""
    logging.basicConfig(level=level, format="%(levelname)s: %(name)s: %(message)s")
    install()
