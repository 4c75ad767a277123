"""Connection URLs: parsing, scheme normalization and password masking."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

from kvstore.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

MASK = "***"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the user info, even one holding an
    unescaped ``/``, and in query parameters whose name contains "password"); safe for
    logs, reprs and errors. Works on the text, so a malformed URL is masked too."""
    if not isinstance(url, str):
        return "<not a url>"
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    location, question, query = rest.partition("?")
    userinfo, at, hostinfo = location.rpartition("@")
    if at and ":" in userinfo:
        location = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostinfo}"
    if question:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret(name) for name, _ in pairs):
            masked = [(name, MASK if _secret(name) else value) for name, value in pairs]
            query = urlencode(masked, safe="*")
    return f"{scheme}://{location}{question}{query}"


def _secret(name: str) -> bool:
    return "password" in name.lower()


def split_url(url: str) -> SplitResult:
    """Parse ``url`` or raise :class:`ConfigurationError` (without echoing the password)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError("connection string must be a URL such as scheme://host/db")
    try:
        parts = urlsplit(url)
        _ = parts.port  # validates the port
    except ValueError:  # its message may quote a password (a '/' in it ends the host)
        raise ConfigurationError(
            f"malformed connection URL {mask_url(url)}: the host or port cannot be read, or "
            "the port is outside 1-65535 (percent-encode '/', '?', '#' and '@' in a password)"
        ) from None
    return parts


def check_query_names(url: str, names: Iterable[str], accepted: Collection[str]) -> None:
    """Raise :class:`ConfigurationError` (password masked) naming every query parameter of
    ``url`` not in ``accepted``, and listing those accepted: caught when the store is built,
    not as a driver's ``TypeError`` at the first connection."""
    strangers = sorted(set(names) - set(accepted))
    if strangers:
        raise ConfigurationError(
            f"unknown query parameter {', '.join(map(repr, strangers))} in {mask_url(url)}; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
