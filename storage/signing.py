"""The evidence key: an Ed25519 key (RFC 8032, through libsodium) that signs the evidence
record, so that an export shows who wrote it and that nobody changed it since.

A hash chain alone shows only that an export is consistent: whoever can write the record or an
export can edit an entry and recompute every hash after it. A signature needs the private key,
which stays on the engine's host, readable by the engine only; its public half
(:attr:`EvidenceKey.public_key`, 64 hex digits) is handed to whoever checks an export.

The key file holds the 32-byte seed as one line of hex. It is made once, at the first use of a
record (mode 0600, written whole and then linked into place, so that a crash leaves no half
key and two processes starting together end up with the same one), with the public key beside
it in a ``.pub`` file for convenience; the key file stays the authority.
"""

from __future__ import annotations

import os
import string
from functools import lru_cache
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from proximity.errors import ProximityError

#: Hex digits of a key (the seed, or the public key): 32 bytes.
KEY_HEX_DIGITS = 64


def is_key_hex(text: object) -> bool:
    """Whether ``text`` is written as a key is: 64 hex digits (a public key, or the seed in a
    key file)."""
    return (
        isinstance(text, str)
        and len(text) == KEY_HEX_DIGITS
        and all(c in string.hexdigits for c in text)
    )


def public_key_file(key_path: Path) -> Path:
    """Where the public half of the key in ``key_path`` is written: the same name with the
    suffix ``.pub`` (``x.evidence.key`` -> ``x.evidence.pub``)."""
    pub = key_path.with_suffix(".pub")
    return pub if pub != key_path else key_path.with_name(key_path.name + ".pub")


class EvidenceKey:
    """The signing key of an evidence record, read from its file (or made there)."""

    def __init__(self, key: SigningKey, path: Path) -> None:
        self._key = key
        self.path = path
        #: The public key, 64 lower-case hex digits: what an export is verified with.
        self.public_key = key.verify_key.encode().hex()

    @classmethod
    def load(cls, path: str | Path, create: bool = True) -> EvidenceKey:
        """The key in ``path``; a missing file is made with a new key when ``create``, else
        refused. A file that cannot be read or holds no key raises :class:`ProximityError`
        naming it."""
        path = Path(path)
        if path.suffix == ".pub":
            raise ProximityError(
                f"{path} is a public key file: the evidence key is the private key beside it"
                " (the .key file)"
            )
        if path.exists():
            return cls(_read(path), path)
        if not create:
            raise ProximityError(
                f"no evidence key at {path}: the engine makes it when it first opens the"
                " evidence record (proximity run); if it is kept elsewhere, name it with"
                " --evidence-key"
            )
        return cls(_create(path), path)

    def sign(self, message: bytes) -> str:
        """The signature of ``message``, 128 hex digits."""
        return self._key.sign(message).signature.hex()


def public_of(seed: str) -> str:
    """The public key (hex) of the private key whose seed is ``seed`` (hex)."""
    return SigningKey(bytes.fromhex(seed)).verify_key.encode().hex()


def verify_signature(public_key: str, message: bytes, signature: object) -> bool:
    """Whether ``signature`` (hex) is the signature of ``message`` by ``public_key`` (hex);
    anything malformed is simply not a valid signature."""
    if not isinstance(signature, str) or not is_key_hex(public_key):
        return False
    try:
        _verify_key(public_key.lower()).verify(message, bytes.fromhex(signature))
    except (CryptoError, ValueError):
        return False
    return True


@lru_cache(maxsize=8)
def _verify_key(public_key: str) -> VerifyKey:
    return VerifyKey(bytes.fromhex(public_key))


def _read(path: Path) -> SigningKey:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProximityError(f"cannot read the evidence key {path}: {reason}") from exc
    seed = text.strip()
    if not is_key_hex(seed):
        raise ProximityError(
            f"the evidence key {path} holds no key (one line of {KEY_HEX_DIGITS} hex digits"
            " is expected): restore the file from its backup; a new key cannot sign for what"
            " the old one signed"
        )
    return SigningKey(bytes.fromhex(seed))


def _create(path: Path) -> SigningKey:
    key = SigningKey.generate()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(key.encode().hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                # A link never replaces a file: a key another process made first is kept.
                os.link(tmp, path)
            except FileExistsError:
                return _read(path)
        finally:
            tmp.unlink(missing_ok=True)
        public_key_file(path).write_text(key.verify_key.encode().hex() + "\n", encoding="ascii")
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the new names survive a power loss with the key's contents
        finally:
            os.close(folder)
    except OSError as exc:
        raise ProximityError(
            f"cannot create the evidence key {path}: {exc.strerror or exc}"
        ) from exc
    return key


def pseudonym_key(path: Path) -> bytes:
    """The key of the keyed hashes that stand for case and device ids in what a researcher
    sees (32 random bytes, hex, in ``path``, made 0600 at first use): without it, a hash
    cannot be turned back into an id by trying the ids one knows."""
    try:
        text = path.read_text(encoding="ascii").strip()
        if is_key_hex(text):
            return bytes.fromhex(text)
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise ProximityError(f"cannot read the pseudonym key {path}: {exc}") from exc
    seed = os.urandom(32).hex()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(seed + "\n")
    try:
        os.link(tmp, path)  # never replaces one another process made first
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(seed)
