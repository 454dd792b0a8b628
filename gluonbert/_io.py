"""Atomic file writes: a crash mid-write leaves the previous file (or directory) intact.

Temporary files and directories from :mod:`tempfile` are private (0600/0700); what is
renamed into place gets the permissions of a normally created file instead (umask applied).
Files are flushed to disk (``fsync``) before they are renamed, and their directory after,
so that a power loss cannot leave a renamed but empty file.

Also here: :class:`DirectoryLock` (one run per output directory) and :func:`boundary`,
the hook point that tests use to stop a run between two writes of a transaction.
"""
import errno
import hashlib
import json
import os
import tempfile

from .errors import UsageError

__all__ = ['DirectoryLock', 'atomic_write', 'boundary', 'check_format_version', 'file_digest',
           'file_sha1', 'fsync_directory', 'fsync_file', 'make_public', 'read_json_object',
           'write_text']

# Tests set this to a callable ``hook(name, path)``; :func:`boundary` calls it between two
# writes of a transaction (see gluonbert.train's checkpoints). None in normal runs.
_boundary_hook = None


def boundary(name, path):
    """Mark a point between two writes of a transaction: ``name`` says which, ``path`` what
    was just written. A no-op unless a test has set ``gluonbert._io._boundary_hook``, which
    may then copy the files as a crash at this point would leave them, or end the process.

    The points: ``'metrics'`` (a line appended to metrics.jsonl), then for each checkpoint
    ``'checkpoint.staging'``, ``'checkpoint.model.params'``, ``'checkpoint.trainer.states'``,
    ``'checkpoint.state.json'``, ``'checkpoint.renamed'``, ``'checkpoint.pointer'``,
    ``'checkpoint.best'`` (best epochs only) and ``'checkpoint.pruned'`` (see
    ``gluonbert.engine.checkpoint.commit_checkpoint``).
    """
    if _boundary_hook is not None:
        _boundary_hook(name, path)


def fsync_file(path):
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path):
    """Flush a directory's entries (renames, new files) to disk; a no-op where the
    filesystem cannot sync a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


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
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_directory(directory)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
    atomic_write(path, write)


class DirectoryLock:
    """An exclusive lock on a directory (its file ``.lock``) for the life of a run.

    Held with ``fcntl.flock``, which the kernel releases when the process ends however it
    ends: a lock left by a killed run blocks nothing. The file holds the owner's pid, for
    the message a second run gets. Use as a context manager, or call :meth:`release`.

    Parameters
    ----------
    directory : str
        Created if missing.

    Raises
    ------
    UsageError
        ``DIRECTORY is in use by another gluonbert run (pid N)``.
    """

    NAME = '.lock'

    def __init__(self, directory):
        self.directory = directory
        self.path = os.path.join(directory, self.NAME)
        self._fd = None
        os.makedirs(directory, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # no flock on this platform: runs are not serialised
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise UsageError(f'{directory} is in use by another gluonbert run '
                                 f'({self._owner()}); wait for it to end, or pick '
                                 f'another directory') from None
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return  # a filesystem without locks: runs are not serialised
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode('ascii'))
        self._fd = fd

    def _owner(self):
        try:
            with open(self.path, encoding='ascii') as f:
                pid = f.read().strip()
        except (OSError, UnicodeDecodeError):
            pid = ''
        return f'pid {pid}' if pid.isdigit() else 'pid unknown'

    def release(self):
        """Unlock (the file stays: removing it could race with a run taking the lock)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def file_digest(path, algorithm='sha256', chunk=1 << 20):
    """The hex digest of a file (``hashlib`` algorithm name), read ``chunk`` bytes at a time."""
    digest = hashlib.new(algorithm)
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def file_sha1(path):
    """The hex sha1 digest of a file (the GluonNLP model zoo's and gluonbert's manifests)."""
    return file_digest(path, 'sha1')


def check_format_version(manifest, path, version, what, redo, error):
    """Raise ``error`` (one line) unless ``manifest['version']`` is ``version``: the file was
    written by another gluonbert, and ``redo`` says how to make it again (e.g. 'save the
    model again')."""
    if manifest.get('version') != version:
        raise error(f'{path}: written by another gluonbert ({what} format version '
                    f'{manifest.get("version")!r}; this one reads version {version}); '
                    f'{redo} with this version')


def read_json_object(path, what, error):
    """The JSON object in ``path``; a missing file, invalid JSON or another JSON value raise
    ``error`` (a GluonbertError subclass) with one line naming the file and ``what`` it is."""
    try:
        with open(path, encoding='utf-8') as f:
            value = json.load(f)
    except FileNotFoundError:
        raise error(f'{path} is missing') from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise error(f'{path}: damaged {what} (not valid JSON: {err})') from err
    if not isinstance(value, dict):
        raise error(f'{path}: damaged {what} (not a JSON object)')
    return value
