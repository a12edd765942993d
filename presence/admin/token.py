"""The operator endpoint's token: read from ``--admin-token-file``, or
generated at start into ``<data>/admin-token`` (mode 0600)."""

from __future__ import annotations

import os
import secrets

#: random bytes of a generated token (256 bits, 43 characters)
TOKEN_BYTES = 32
#: a token file holds one line of at least this many characters, at most MAX
MIN_TOKEN, MAX_TOKEN = 16, 256
GENERATED = "admin-token"


class TokenError(Exception):
    """The token file cannot be used (the message says why, never the token)."""


def read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_TOKEN + 2)
    except OSError as e:
        raise TokenError(f"--admin-token-file: cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise TokenError(f"--admin-token-file: {path} is not UTF-8 text")
    token = text.strip()
    if not MIN_TOKEN <= len(token) <= MAX_TOKEN or any(c.isspace() for c in token) \
            or not token.isascii() or not token.isprintable():
        raise TokenError(f"--admin-token-file: {path} must hold one token of"
                         f" {MIN_TOKEN}-{MAX_TOKEN} printable ASCII characters")
    return token


def generate_token(data_dir: str) -> tuple:
    """A new random token written to ``<data_dir>/admin-token`` (created
    with mode 0600, replacing an older one); ``(token, path)``."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(data_dir, GENERATED))
    token = secrets.token_urlsafe(TOKEN_BYTES)
    part = path + ".new"
    try:
        os.unlink(part)
    except FileNotFoundError:
        pass
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # bytes: after ``twistd -u`` the codec modules may not be importable
        os.write(fd, token.encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(part, path)
    return token, path
