"""Typed records: the coach's four kinds and the :class:`Record` base for your own."""

from kvstore.models.base import Id, JsonObject, Record
from kvstore.models.context import ContextRecord
from kvstore.models.identity import IdentityRecord
from kvstore.models.state import StateRecord
from kvstore.models.user import UserRecord

__all__ = [
    "ContextRecord",
    "Id",
    "IdentityRecord",
    "JsonObject",
    "Record",
    "StateRecord",
    "UserRecord",
]
