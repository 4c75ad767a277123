"""Serializers turn records into bytes for the backends and back."""

from serializers.base import Serializer
from serializers.json import JSONSerializer

__all__ = ["JSONSerializer", "Serializer"]
