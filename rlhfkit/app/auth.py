"""Credentials for the labelling app: login tokens, sessions, CSRF tokens, the app secret, login rate limits, and
which client address those limits count.

- A login token is 32 random bytes (url-safe base64), printed once by `rlhfkit label add-user`; the database keeps
  only its scrypt hash (salted), so a copied database does not let anyone log in.
- A session is a random id in an HttpOnly, SameSite=Strict cookie; the database keeps HMAC(secret, id).
- The CSRF token is HMAC(secret, "csrf:" + session id): tied to the session, sent back in `X-CSRF-Token`.
- The secret is 32 random bytes created on first run in a file of mode 0600 (never a default).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
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


class LoginLimiter:
    """Failed logins, counted so that they slow a guesser without letting anyone lock a user out.

    - Per (name, client address): after `free_failures` failures, the next try from that address for that name
      must wait 1 s, and each further failure doubles the wait (at most `max_wait_s`). A success clears it; so
      does a quiet `window_s` after the wait ends.
    - Per client address, over all names: at most `per_address` failures in a sliding `window_s`, then every login
      from there waits. This bounds the scrypt time one address can burn by rotating names.

    Nothing is counted per name alone: that would be a lock-out anyone knowing the name could trigger, while
    guessing a 256-bit token is hopeless anyway. In memory: a restart forgets it. `clock` is for tests.
    """

    def __init__(self, free_failures: int = 5, max_wait_s: float = 300.0, per_address: int = 30,
                 window_s: float = 300.0, clock=time.monotonic):
        self.free_failures, self.max_wait_s = free_failures, max_wait_s
        self.per_address, self.window_s = per_address, window_s
        self._clock = clock
        self._pairs: dict[tuple[str, str], tuple[int, float]] = {}  # (name, address) -> (failures, last failure)
        self._addresses: dict[str, deque] = {}  # address -> times of its failures within the window
        self._lock = threading.Lock()

    def _backoff(self, failures: int) -> float:
        """The wait after the latest of `failures` failures."""
        over = failures - self.free_failures
        return 0.0 if over < 0 else min(self.max_wait_s, 2.0 ** min(over, 60))

    def _pair(self, key: tuple[str, str], now: float) -> tuple[int, float]:
        failures, last = self._pairs.get(key, (0, now))
        if failures and now > last + self._backoff(failures) + self.window_s:
            del self._pairs[key]  # quiet long enough: start over
            return 0, now
        return failures, last

    def _recent(self, address: str, now: float) -> deque:
        q = self._addresses.get(address, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def wait(self, name: str, address: str) -> float:
        """Seconds before a login for `name` from `address` may be tried (0: now)."""
        now = self._clock()
        with self._lock:
            failures, last = self._pair((name, address), now)
            wait = last + self._backoff(failures) - now if failures else 0.0
            q = self._recent(address, now)
            if len(q) >= self.per_address:
                wait = max(wait, q[0] + self.window_s - now)
        return max(wait, 0.0)

    def fail(self, name: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._pairs) + len(self._addresses) > 100_000:  # bound memory under a flood of distinct keys
                self._pairs.clear()
                self._addresses.clear()
            failures, _ = self._pair((name, address), now)
            self._pairs[(name, address)] = (failures + 1, now)
            q = self._addresses[address] = self._recent(address, now)
            q.append(now)

    def succeed(self, name: str, address: str) -> None:
        """The right token: this name's count from this address starts over (the address's count stays)."""
        with self._lock:
            self._pairs.pop((name, address), None)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(entries: list[str] | tuple[str, ...]) -> list[Network]:
    """Addresses or CIDR networks ("127.0.0.1", "10.0.0.0/8", "::1"); anything else is a ValueError naming it."""
    out = []
    for e in entries:
        try:
            out.append(ipaddress.ip_network(e.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted proxies: {e!r} is not an IP address or network (like 10.0.0.0/8)") from None
    return out


def _in(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; the operator names them as a.b.c.d.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return any(ip in n or (mapped is not None and mapped in n) for n in networks)


def client_address(peer: str, forwarded_for: list[str], trusted: list[Network]) -> str:
    """The address a login limit counts. The TCP peer, unless the peer is a trusted proxy: then X-Forwarded-For is
    read from the right (each proxy appends the address it got the request from) and the first entry that is not
    itself a trusted proxy is the client. Entries further left were written by the client and mean nothing."""
    if not _in(peer, trusted):
        return peer
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted):
            return hop
    return hops[0] if hops else peer
