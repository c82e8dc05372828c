"""Encryption at rest for partner credentials (access tokens, API secrets).

Values are encrypted with Fernet under ``settings.ENCRYPTION_KEYS`` (newest first; older keys
still decrypt, so keys can be rotated by prepending a new one and re-saving).
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"ECPOWER_ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from None


def encrypt(plaintext: str) -> str:
    return _fernet(tuple(settings.ENCRYPTION_KEYS)).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet(tuple(settings.ENCRYPTION_KEYS)).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "A stored credential cannot be decrypted with ECPOWER_ENCRYPTION_KEYS "
            "(was the key changed without keeping the old one?)."
        ) from None


class EncryptedTextField(models.TextField):
    """A text column stored encrypted; reads give back the plaintext. Empty stays empty."""

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(value)
