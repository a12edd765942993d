"""Handset secrets: what a handset proves it is with.

A user's handset number gets a *handset secret* (192 random bits) when the
user asks for one (the settings page, or ``POST /api/wireless/secret``): it
is shown once and kept here only as its SHA-256 (a fast hash is enough for a
secret of that entropy), bound to the user and the number.  A new secret
replaces the old one.  The secret is what the emulator sends to the
simulator's handset API (``Authorization: Bearer <secret>``), and what it
proves a push link with (:func:`link_proof`), without sending it.

The file (``handset-keys.json`` under ``--data``, mode 0600) maps each
number to ``{"user": name, "sha256": hex}``; it is rewritten whole (atomic
rename) on every change, which is rare (a user issuing a secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from typing import Dict, Optional, Tuple

from twisted.logger import Logger

FILENAME = "handset-keys.json"
#: the header a handset sends with a push link (see :func:`link_proof`)
PROOF_HEADER = b"x-handset-proof"
_DUMMY = hashlib.sha256(b"no handset has this secret").digest()
MAX_SECRET = 256

log = Logger()


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def link_proof(secret_digest: bytes, token: str) -> str:
    """What the handset that holds the secret (whose SHA-256 is
    ``secret_digest``) sends with the push link ``token``: an HMAC of the
    token, so the secret itself never travels to the presence server and a
    proof is good for that one link only."""
    return hmac.new(secret_digest, token.encode("utf-8"), hashlib.sha256).hexdigest()


def proof_for(secret: str, token: str) -> str:
    """:func:`link_proof` from the secret itself (the handset's side)."""
    return link_proof(digest(secret), token)


class HandsetKeys:
    """number -> (user, SHA-256 of the secret), optionally kept in a file."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        self.keys: Dict[str, Tuple[str, bytes]] = {}
        if path is not None:
            self._load()

    def _load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:  # type: ignore[arg-type]
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.error("the handset secrets in {path} cannot be read ({why}); handsets"
                      " must be given new ones", path=self.path, why=str(e))
            return
        for number, entry in (data.items() if isinstance(data, dict) else ()):
            try:
                self.keys[number] = (str(entry["user"]), bytes.fromhex(entry["sha256"]))
            except (KeyError, TypeError, ValueError):
                continue

    def _save(self) -> None:
        if self.path is None:
            return
        data = {n: {"user": u, "sha256": h.hex()} for n, (u, h) in self.keys.items()}
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def issue(self, user: str, number: str) -> str:
        """A new secret for ``user``'s handset ``number`` (the old one of that
        number stops working); the caller shows it once."""
        secret = secrets.token_urlsafe(24)
        self.keys[number] = (user, digest(secret))
        self._save()
        return secret

    def secret_digest(self, number: str) -> Optional[Tuple[str, bytes]]:
        return self.keys.get(number)

    def check(self, number: str, secret: Optional[str]) -> Optional[str]:
        """The user whose secret for ``number`` is ``secret``, else None.
        Compares in constant time, against a dummy for a number without a
        secret, so the answer takes as long either way."""
        found = self.keys.get(number)
        given = digest(secret) if isinstance(secret, str) and 0 < len(secret) <= MAX_SECRET \
            else b""
        ok = hmac.compare_digest(given, found[1] if found else _DUMMY)
        return found[0] if ok and found is not None else None

    def check_proof(self, number: str, token: str, proof: Optional[str]) -> bool:
        """Whether ``proof`` is the handset ``number``'s proof of ``token``."""
        found = self.keys.get(number)
        expected = link_proof(found[1] if found else _DUMMY, token)
        given = proof if isinstance(proof, str) and proof.isascii() else ""
        return hmac.compare_digest(given.encode("ascii"), expected.encode("ascii")) \
            and found is not None
