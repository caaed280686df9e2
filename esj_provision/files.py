"""Files the tool writes for the user: atomically, and with mode 0600 when they hold a secret."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import EsjProvisionError, UsageError


def read_user_file(path: Path, what: str) -> str:
    """The UTF-8 text of a file the user named (an options file, a secret file), or a usage error
    that names the file and says why it could not be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(f"cannot read {what} file {str(path)!r}: {reason}") from None


def write_output(path: str | os.PathLike[str], text: str, *, contains_secret: bool) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; mode 0600 when it holds a secret.

    The data goes to a temporary file in the same directory, created with its final mode (a
    secret is never readable by others, not even for a moment), then ``os.replace`` puts it in
    place. On any error the temporary file is removed and the target is left as it was.
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise UsageError(
            f"cannot write {target}: directory {directory} does not exist",
            hint="create the directory first, or choose another --out",
        )
    if target.is_dir():
        raise UsageError(f"cannot write {target}: it is a directory")

    mode = 0o600 if contains_secret else 0o666  # 0o666 is narrowed by the umask, as usual
    tmp: str | None = None
    try:
        for _ in range(100):
            tmp = os.path.join(directory, f".{target.name}.{os.urandom(6).hex()}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 random collisions
            raise FileExistsError(f"no free temporary name in {directory}")
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise EsjProvisionError(
            f"cannot write {target}: {exc.strerror or exc}",
            hint="check the directory exists and is writable",
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return target
