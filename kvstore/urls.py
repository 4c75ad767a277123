"""Connection URLs: parsing, scheme normalization and password masking."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

from kvstore.errors import ConfigurationError

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; safe for logs, reprs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        if parts.port is None or parts.port >= 0:  # validates the port
            return urlunsplit(_with_netloc(parts, parts.username, MASK))
    except ValueError:
        pass
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if sep and at and ":" in userinfo and "/" not in userinfo:  # e.g. several host:port
        return f"{scheme}://{userinfo.partition(':')[0]}:{MASK}@{hosts}"
    return "<unparsable url>"


def split_url(url: str) -> SplitResult:
    """Parse ``url`` or raise :class:`ConfigurationError` (without echoing the password)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError("connection string must be a URL such as scheme://host/db")
    try:
        parts = urlsplit(url)
        _ = parts.port  # validates the port
    except ValueError as exc:
        raise ConfigurationError(f"malformed connection URL {mask_url(url)}: {exc}") from None
    return parts


def _with_netloc(parts: SplitResult, username: str | None, password: str | None) -> SplitResult:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    userinfo = ""
    if username is not None:
        userinfo = username + (f":{password}" if password is not None else "") + "@"
    return parts._replace(netloc=userinfo + host)
