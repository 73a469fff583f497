"""The key that signs the web UI's cookies, kept in ``[web] session_secret_file``.

SECURITY: whoever has the key can forge sign-in cookies (session cookies also need a
server-side session, which a forged signature does not give). It is created on first start
with 32 bytes from ``secrets`` in a file only the owner can read (0600, ``O_EXCL`` so a file
planted meanwhile is not overwritten, ``O_NOFOLLOW`` so a symlink is not followed). An
existing key that other users can read or write is refused rather than used, as OpenSSH does
with private keys.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from dsguard.errors import ConfigError

KEY_BYTES = 32
_SETTING = "web.session_secret_file"


def load_or_create_secret(path: str | Path) -> bytes:
    """The key in ``path``, created first when the file does not exist.

    Raises :class:`ConfigError` (one line) when it cannot be read or created, is too short,
    or is readable or writable by group or others.
    """
    path = Path(path)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        _create(path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    except OSError as exc:
        raise ConfigError(_SETTING, [f"cannot create {path}: {exc.strerror or exc}"]) from None
    try:
        return _read(path)
    except FileNotFoundError:
        raise ConfigError(_SETTING, [f"{path} vanished after it was created"]) from None


def _create(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits; never added any
        os.write(fd, secrets.token_hex(KEY_BYTES).encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(_SETTING, [f"cannot read {path}: {exc.strerror or exc}"]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(_SETTING, [f"{path} is not a regular file"])
        if info.st_mode & 0o077:
            raise ConfigError(
                _SETTING,
                [
                    f"{path} is accessible by other users (mode {info.st_mode & 0o777:o}); "
                    f"run: chmod 600 {path}"
                ],
            )
        data = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(data) < KEY_BYTES:
        raise ConfigError(
            _SETTING, [f"{path} holds {len(data)} bytes; a key needs at least {KEY_BYTES}"]
        )
    return data
