"""Salted slow password hashes (scrypt), self-describing so the cost can change.

A hash is ``scrypt$<log2 N>$<r>$<p>$<salt hex>$<key hex>``.  Hashing costs
tens of milliseconds at the default cost, so callers run it off the reactor
thread.
"""

from __future__ import annotations

import hashlib
import hmac
import os

DEFAULT_COST = 14
_R, _P, _LEN = 8, 1, 32


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    if not 1 <= cost <= 20:
        raise ValueError("the hash cost is 1 to 20")
    salt = os.urandom(16)
    key = _derive(password, salt, cost, _R, _P)
    return f"scrypt${cost}${_R}${_P}${salt.hex()}${key.hex()}"


def unmatchable(cost: int = DEFAULT_COST) -> str:
    """A well-formed hash that no password matches (a random key, never
    derived), to check against when a user does not exist: the answer then
    costs one hash at ``cost``, the same as a wrong password's."""
    return f"scrypt${cost}${_R}${_P}${os.urandom(16).hex()}${os.urandom(_LEN).hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, cost, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(key)
        if not 1 <= int(cost) <= 20:
            return False
        derived = _derive(password, bytes.fromhex(salt), int(cost), int(r), int(p))
    except (ValueError, TypeError, OverflowError, MemoryError):
        return False
    return hmac.compare_digest(derived, expected)


def _derive(password: str, salt: bytes, cost: int, r: int, p: int) -> bytes:
    n = 2 ** cost
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p,
                          maxmem=2 * 128 * r * (n + p + 2) + 2 ** 20, dklen=_LEN)
