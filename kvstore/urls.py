"""Connection URLs: parsing, scheme normalization and password masking."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

from kvstore.errors import ConfigurationError

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``; safe for logs, reprs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    username = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{username}:{MASK}@{hostinfo}"))


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
