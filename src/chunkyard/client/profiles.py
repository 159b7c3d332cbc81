"""Where the client finds its gateway and token: flags, then the environment, then a
config file of named profiles, then the loopback default (as ``aws`` and ``gh`` do).

The file is TOML at ``$CHUNKYARD_CONFIG``, else ``$XDG_CONFIG_HOME/chunkyard/config.toml``
(``~/.config/chunkyard/config.toml``)::

    default_profile = "team"          # optional; else the profile named "default"

    [profiles.default]
    url = "http://127.0.0.1:8080"

    [profiles.team]
    url = "https://chunkyard.example.com"
    token = "cy_…"                    # keep the file owner-only: it is a password

``--profile NAME`` or ``CHUNKYARD_PROFILE`` picks another profile. Flags reach this
module as ``CHUNKYARD_URL``/``CHUNKYARD_TOKEN`` (``chunkyard.cli`` sets them), so
library users get the same order: arguments, environment, file.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidRequest

DEFAULT_URL = "http://127.0.0.1:8080"
KEYS = ("url", "token")


def config_path() -> Path:
    explicit = os.environ.get("CHUNKYARD_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chunkyard" / "config.toml"


@dataclass(frozen=True)
class Profile:
    name: str
    url: str | None = None
    token: str | None = None


def load_profile(name: str | None = None, path: Path | None = None) -> Profile:
    """The profile ``name`` (else ``CHUNKYARD_PROFILE``, the file's ``default_profile``,
    ``default``) from the config file; an empty one when there is no file. Asking for a
    profile the file lacks, or a file that is not valid TOML, is an error."""
    path = path or config_path()
    asked = name or os.environ.get("CHUNKYARD_PROFILE") or None
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if asked and asked != "default":
            raise InvalidRequest(f"no profile {asked!r}: {path} does not exist") from None
        return Profile("default")
    except OSError as exc:
        raise InvalidRequest(f"cannot read the config file {path}: {exc}") from exc
    try:
        doc = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path} is not valid TOML: {exc}") from exc
    chosen = asked or doc.get("default_profile") or "default"
    profiles = doc.get("profiles", {})
    entry = profiles.get(chosen) if isinstance(profiles, dict) else None
    if entry is None:
        if asked or doc.get("default_profile"):
            known = ", ".join(sorted(profiles)) if isinstance(profiles, dict) else ""
            raise InvalidRequest(f"{path} has no profile {chosen!r} (it has: {known or 'none'})")
        return Profile("default")
    if not isinstance(entry, dict) or any(
        k not in KEYS or not isinstance(v, str) for k, v in entry.items()
    ):
        raise InvalidRequest(f"{path}: profile {chosen!r} may hold only url and token strings")
    if entry.get("token"):
        _warn_if_shared(path)
    return Profile(chosen, entry.get("url"), entry.get("token"))


def _warn_if_shared(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"chunkyard: warning: {path} holds a token and others may read it (chmod 600 {path})",
            file=sys.stderr,
        )


def resolve(url: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """The gateway URL and token: arguments, then CHUNKYARD_URL/CHUNKYARD_TOKEN, then
    the config file's profile, then the loopback default (and no token). A profile's
    token goes only to that profile's gateway: never to a URL given some other way."""
    url = url or os.environ.get("CHUNKYARD_URL") or None
    token = token or os.environ.get("CHUNKYARD_TOKEN") or None
    if url is None or token is None:
        profile = load_profile()
        url = url or profile.url
        final = (url or DEFAULT_URL).rstrip("/")
        same_gateway = profile.url is None or profile.url.rstrip("/") == final
        if token is None and profile.token and same_gateway:
            token = profile.token
    return (url or DEFAULT_URL).rstrip("/"), token
