"""The cluster key that authenticates raft peers: its format, and where a server
without ``--encrypt`` keeps its own.

Why a key always: PySyncObj's transport unpickles what it receives, so a raft port
without a key runs any code a stranger sends it. With a key every frame is a
Fernet token (AES + HMAC) that must verify before it is unpickled. A single server
or a ``--dev`` agent has no peers to share a key with, so it makes one and keeps it
in its data dir (``<data dir>/server/raft/cluster.key``, 0600, in a 0700 folder):
the same key after a restart, and the one to give ``--encrypt`` if more servers
join it later.

Format: what ``corral operator keygen`` prints, 32 random bytes in standard
base64 (as Nomad's gossip key). Anything else is refused, so that a typo such as
``--encrypt a`` cannot become a guessable key.

Pure standard library: the CLI validates ``--encrypt`` with it before starting an
agent, and the server loads or creates the key with it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets

KEY_BYTES = 32
KEY_FILE = "cluster.key"


class ClusterKeyError(ValueError):
    """A key that is not what ``corral operator keygen`` makes, or a key file that
    cannot be used (the message names the file and what to do)."""


def generate() -> str:
    """A new random key, as ``corral operator keygen`` prints it."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def validate(key: str) -> str:
    """Return ``key`` stripped if it is 32 bytes in standard base64, else raise."""
    text = key.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ClusterKeyError(
            "the cluster key must be base64, as `corral operator keygen` prints it"
        ) from None
    if len(raw) != KEY_BYTES:
        raise ClusterKeyError(
            f"the cluster key must be {KEY_BYTES} random bytes in base64 (this one is "
            f"{len(raw)} bytes); make one with `corral operator keygen`"
        )
    return text


def load_or_create(folder: str) -> str:
    """The key kept in ``folder`` (created with a new key on first use).

    A key file that exists but does not hold a valid key stops the server: making
    a new one would split it from peers that have the old one.
    """
    path = os.path.join(folder, KEY_FILE)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    try:
        with open(path, encoding="ascii") as f:
            stored = f.read()
    except FileNotFoundError:
        stored = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ClusterKeyError(f"cannot read the cluster key {path}: {exc}") from None
    if stored is not None:
        try:
            key = validate(stored)
        except ClusterKeyError as exc:
            raise ClusterKeyError(
                f"{path} is damaged: {exc}. Restore it from a backup or from another "
                "server's key (give it with --encrypt); deleting it makes a new key "
                "that peers holding the old one will not accept"
            ) from None
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        return key
    key = generate()
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return key
