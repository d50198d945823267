"""Credentials for the labelling app: login tokens, sessions, CSRF tokens, the app secret, login rate limits.

- A login token is 32 random bytes (url-safe base64), printed once by `rlhfkit label add-user`; the database keeps
  only its scrypt hash (salted), so a copied database does not let anyone log in.
- A session is a random id in an HttpOnly, SameSite=Strict cookie; the database keeps HMAC(secret, id).
- The CSRF token is HMAC(secret, "csrf:" + session id): tied to the session, sent back in `X-CSRF-Token`.
- The secret is 32 random bytes created on first run in a file of mode 0600 (never a default).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import deque
from pathlib import Path

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    salt = secrets.token_bytes(16)
    h = hashlib.scrypt(token.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${h.hex()}"


def verify_token(token: str, stored: str) -> bool:
    try:
        algo, n, r, p, salt, want = stored.split("$")
    except ValueError:
        return False
    if algo != "scrypt":
        return False
    got = hashlib.scrypt(token.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    return hmac.compare_digest(got.hex(), want)


# A hash to verify against when the user does not exist, so a login for an unknown name costs the same time.
_DUMMY_HASH = hash_token("not-a-user")


def check_login(stored_hash: str | None, token: str) -> bool:
    if stored_hash is None:
        verify_token(token, _DUMMY_HASH)
        return False
    return verify_token(token, stored_hash)


def load_or_create_secret(path: str | os.PathLike) -> bytes:
    """Read the app secret, creating it (mode 0600, O_EXCL so two starting servers don't race) on first run."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = p.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{p}: secret file is readable by others (mode {mode:o}); chmod 600 it") from None
        data = p.read_bytes()
        if len(data) < 32:
            raise ValueError(f"{p}: secret file too short ({len(data)} bytes)")
        return data
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    return p.read_bytes()


class Sessions:
    """Derives the stored session hash and the CSRF token from a session id."""

    def __init__(self, secret: bytes):
        self._secret = secret

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(32)

    def id_hash(self, sid: str) -> str:
        return hmac.new(self._secret, b"session:" + sid.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, sid: str) -> str:
        return hmac.new(self._secret, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sid: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(sid), token)


class RateLimiter:
    """Sliding-window count of failed logins per key (client address, and user name). In memory: a restart
    resets it, which the 0600 secret and 256-bit tokens make harmless (guessing a token is hopeless anyway;
    the limit is there to stop log spam and slow scrypt from being used to burn CPU)."""

    def __init__(self, max_failures: int = 10, window_s: float = 300.0):
        self.max_failures = max_failures
        self.window_s = window_s
        self._hits: dict[str, deque] = {}
        self._lock = threading.Lock()

    def _prune(self, q: deque, now: float) -> None:
        while q and q[0] < now - self.window_s:
            q.popleft()

    def blocked(self, *keys: str) -> float:
        """Seconds until a blocked key frees up (0 if none is blocked)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for k in keys:
                q = self._hits.get(k)
                if q is None:
                    continue
                self._prune(q, now)
                if len(q) >= self.max_failures:
                    wait = max(wait, q[0] + self.window_s - now)
        return wait

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._hits) > 100_000:  # bound memory under a flood of distinct keys
                self._hits.clear()
            for k in keys:
                self._hits.setdefault(k, deque()).append(now)

    def reset(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._hits.pop(k, None)
