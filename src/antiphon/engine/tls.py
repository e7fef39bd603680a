"""TLS for ``wss://``: the server's context from a certificate and key, checked at start-up.

:func:`server_context` is what ``--certfile/--keyfile`` and the ``certfile``/``keyfile``
TOML keys turn into; a program can as well build its own ``ssl.SSLContext`` and pass it as
``ServerConfig(ssl=...)``. Every problem with the files is one :class:`ConfigError` line
naming the file - missing, unreadable, not PEM, an encrypted key, a key that does not
match - raised before the server binds anything, never an OpenSSL "PEM lib" at the
first connection.

Clients take a caller's context (``ssl_context=``); without one they use
``ssl.create_default_context()``, which trusts the system's CAs and honours
``SSL_CERT_FILE``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final, NoReturn

from antiphon.errors import ConfigError

__all__ = ["server_context"]

_CERT_MARKER: Final = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER: Final = b"PRIVATE KEY-----"
_ENCRYPTED_MARKERS: Final = (b"ENCRYPTED PRIVATE KEY-----", b"Proc-Type: 4,ENCRYPTED")


def _read(key: str, path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {str(path)!r} ({exc.strerror or exc})") from None


def _no_passphrase() -> NoReturn:
    raise ConfigError(
        "keyfile: the key is encrypted; give an unencrypted key (antiphon never prompts for a passphrase)"
    )


def server_context(certfile: str | Path, keyfile: str | Path | None = None) -> ssl.SSLContext:
    """A server-side TLS context from PEM files: ``certfile`` (the chain, leaf first) and ``keyfile``.

    Without ``keyfile`` the key must be in ``certfile``. Raises :class:`ConfigError`
    naming the file and the problem.
    """
    cert_pem = _read("certfile", certfile)
    if _CERT_MARKER not in cert_pem:
        raise ConfigError(f"certfile: {str(certfile)!r} holds no PEM certificate ({_CERT_MARKER.decode()})")
    key_where, key_pem = ("keyfile", _read("keyfile", keyfile)) if keyfile is not None else ("certfile", cert_pem)
    shown = str(keyfile if keyfile is not None else certfile)
    if _KEY_MARKER not in key_pem:
        hint = "" if keyfile is not None else "; give keyfile"
        raise ConfigError(f"{key_where}: {shown!r} holds no PEM private key{hint}")
    if any(marker in key_pem for marker in _ENCRYPTED_MARKERS):
        raise ConfigError(
            f"{key_where}: {shown!r} is encrypted; give an unencrypted key (antiphon never prompts for a passphrase)"
        )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except ssl.SSLError as exc:
        detail = exc.reason or str(exc)
        if "MISMATCH" in str(detail).upper():
            raise ConfigError(
                f"{key_where}: the key in {shown!r} does not match the certificate in {str(certfile)!r}"
            ) from None
        raise ConfigError(f"certfile: {str(certfile)!r} and its key are not usable ({detail})") from None
    except OSError as exc:  # the files changed under us
        raise ConfigError(f"certfile: cannot load {str(certfile)!r} ({exc.strerror or exc})") from None
    return context
