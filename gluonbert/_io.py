"""Atomic file writes: a crash mid-write leaves the previous file (or directory) intact.

Temporary files and directories from :mod:`tempfile` are private (0600/0700); what is
renamed into place gets the permissions of a normally created file instead (umask applied).
"""
import os
import tempfile

__all__ = ['atomic_write', 'write_text', 'make_public']


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path):
    """Give a temporary file or directory the mode ``open``/``mkdir`` would have given it."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def atomic_write(path, write):
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    os.close(fd)
    try:
        write(tmp)
        make_public(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
    atomic_write(path, write)
