"""Atomic file writes: a crash mid-write leaves the previous file (or directory) intact.

Temporary files and directories from :mod:`tempfile` are private (0600/0700); what is
renamed into place gets the permissions of a normally created file instead (umask applied).
Files are flushed to disk (``fsync``) before they are renamed, and their directory after,
so that a power loss cannot leave a renamed but empty file.

Every file gluonbert writes goes through :func:`writing` (directly, or through
:func:`atomic_write`, :func:`write_text`, :func:`append_text` and :func:`save_ndarrays`):
a full disk, a disk quota or a file size limit (``ENOSPC``, ``EDQUOT``, ``EFBIG``, or
MXNet's ``FileStream.Write incomplete``, which is what its writers raise for them) becomes
one :class:`~gluonbert.errors.StorageError` line naming the file and the space it needs,
once the partial file is removed. :func:`check_space` refuses a write of known size before
anything is written.

Also here: :class:`DirectoryLock` (one run per output directory) and :func:`boundary`,
the hook point that tests use to stop a run between two writes of a transaction.
"""
import contextlib
import errno
import hashlib
import os
import sys
import tempfile

from .errors import StorageError, UsageError

__all__ = ['DirectoryLock', 'append_text', 'atomic_write', 'boundary', 'check_format_version',
           'check_space', 'file_digest', 'file_sha1', 'format_bytes', 'fsync_directory',
           'fsync_file', 'make_public', 'ndarray_file_bytes',
           'save_ndarrays', 'storage_error', 'write_text', 'writing']

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
    ``gluonbert.engine.checkpoint.commit_checkpoint``); ``'export.staging'`` once an export's
    staging directory exists, before its files are written (``gluonbert.export``).
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


def atomic_write(path, write, needed=None):
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    ``needed``: the bytes ``write`` writes, if known (for the message of a full disk). A
    failed write leaves ``path`` as it was and no temporary file; a full disk raises a
    :class:`~gluonbert.errors.StorageError` naming ``path`` (see :func:`writing`).
    """
    with writing(path, needed) as target:
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
        except BaseException:
            target.partial(tmp)
            raise
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
    atomic_write(path, write, needed=len(text.encode('utf-8')))


def append_text(path, text):
    """Append ``text`` (UTF-8) to ``path``, flushed to disk. A failed append is cut off
    again: the file keeps what it had, never a torn line."""
    data = text.encode('utf-8')
    with writing(path, len(data)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:  # a write may be short without an error
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


# --------------------------------------------------------------- full disks, one line
SHORT_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# check_space asks for this much more than the files' bytes: directory entries, the small
# files around them (state.json, the pointer), and filesystem blocks
SPACE_MARGIN_BYTES, SPACE_MARGIN_SHARE = 1 << 16, 0.01
_NEXT_STEP = 'free space or choose another directory'


def format_bytes(count):
    """``'12.3 MB'``: a byte count in decimal units, three significant digits."""
    if count < 1000:
        return f'{count} B'
    for unit in ('kB', 'MB', 'GB', 'TB'):
        count /= 1000
        if count < 999.95 or unit == 'TB':
            return f'{count:.3g} {unit}' if count < 100 else f'{count:.0f} {unit}'
    raise AssertionError('unreachable')


def _existing_directory(path):
    """The nearest directory at or above ``path`` that exists (where it will be written)."""
    directory = os.path.abspath(path)
    while not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return directory


def free_bytes(path):
    """The bytes an unprivileged write may still use on ``path``'s filesystem (``statvfs``'s
    ``f_bavail``); None where that is not known."""
    try:
        stat = os.statvfs(_existing_directory(path))
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return stat.f_bavail * stat.f_frsize


def file_size_limit():
    """This process's largest file in bytes (``RLIMIT_FSIZE``, ``ulimit -f``); None if
    unlimited or unknown."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def _short_write_code(err, needed):
    """``ENOSPC``/``EDQUOT``/``EFBIG`` if ``err`` is a write that ran out of room, else None."""
    if isinstance(err, StorageError):
        return err.errno
    if isinstance(err, OSError):
        return err.errno if err.errno in SHORT_WRITE_ERRNOS else None
    mxnet = sys.modules.get('mxnet')  # an MXNetError comes from an imported mxnet
    if mxnet is None or not isinstance(err, mxnet.base.MXNetError) or \
            'Write incomplete' not in str(err):
        return None
    # dmlc's FileStream drops fwrite's errno: a file over the size limit fails the same way
    limit = file_size_limit()
    return errno.EFBIG if limit is not None and needed is not None and needed >= limit \
        else errno.ENOSPC


def _message(path, code, needed, free, *, at_least=False, refused=False):
    if needed is not None and at_least and needed == 0:
        needed = None  # an empty partial file says nothing of the size
    size = None if needed is None else ('more than ' if at_least else '') + format_bytes(needed)
    nothing = 'nothing was written: ' if refused else ''
    if code == errno.EFBIG:
        limit = file_size_limit()
        of = f'a file of {size}' if size else 'the file'
        if limit is not None:
            return (f'{path}: no space for {of}: the file size limit is {format_bytes(limit)} '
                    f'(ulimit -f); {nothing}raise it or choose another directory')
        return (f'{path}: no space for {of}: larger than this filesystem allows; '
                f'{nothing}choose another directory')
    if code == errno.EDQUOT:
        numbers = f' ({size} needed)' if size else ''
        return f'{path}: no space left in the disk quota{numbers}; {nothing}{_NEXT_STEP}'
    numbers = ', '.join(([f'{format_bytes(free)} free'] if free is not None else []) +
                        ([f'{size} needed'] if size else []))
    where = 'on the device for it' if refused else 'left on the device'
    return (f'{path}: no space {where}{f" ({numbers})" if numbers else ""}; '
            f'{nothing}{_NEXT_STEP}')


def storage_error(err, path, needed=None, *, total=None, at_least=False):
    """The :class:`~gluonbert.errors.StorageError` for ``err`` if it is a write that ran out
    of room (see :data:`SHORT_WRITE_ERRNOS` and MXNet's ``Write incomplete``), naming
    ``path`` and the free space now; None for any other error.

    ``needed``: the file's bytes (``at_least``: a lower bound), what a file size limit is
    compared with; ``total``: the bytes of the whole transaction the file is part of (e.g. a
    checkpoint), what a full disk must make room for (default ``needed``). A StorageError
    from a nested write is named anew (``path``, the free space now).
    """
    if isinstance(err, StorageError):
        if not err.written:  # refused before writing: its message holds
            return err
        if needed is None:
            needed, at_least = err.file_bytes, False
        path = path or err.path
    code = _short_write_code(err, needed)
    if code is None:
        return None
    free = free_bytes(path)
    shown = needed if code == errno.EFBIG or total is None else total
    error = StorageError(_message(path, code, shown, free, at_least=at_least),
                         path=path, code=code, needed=shown, free=free)
    error.file_bytes = needed
    return error


class _Target:
    """What :func:`writing` is writing now: ``path`` (as the user knows it), its ``needed``
    bytes and the ``total`` of the transaction it is part of."""

    def __init__(self, path, needed, total):
        self.expect(path, needed, total)

    def expect(self, path, needed=None, total=None):
        """The file written from here on (a transaction writes several)."""
        self.path, self.needed, self.total, self.at_least = path, needed, total, False

    def partial(self, written):
        """Before the partial file ``written`` is removed: its size, a lower bound on what
        is needed where the size was not known."""
        if self.needed is None:
            try:
                self.needed, self.at_least = os.path.getsize(written), True
            except OSError:
                pass


@contextlib.contextmanager
def writing(path, needed=None, total=None):
    """Run a write of the file ``path`` (``needed`` bytes, if known; ``total``: those of the
    transaction it is part of); a write that runs out of room raises one
    :class:`~gluonbert.errors.StorageError` line naming ``path``.

    Put it around the write *and* its clean-up (removing a temporary file or a staging
    directory): the free space in the message is then what the user has. It yields a
    target whose ``expect(path, needed, total)`` names the next file of a transaction that
    writes several, and whose ``partial(tmp)`` takes a partial file's size as a lower bound
    on what is needed. Other errors pass unchanged.
    """
    target = _Target(path, needed, total)
    try:
        yield target
    except Exception as err:
        problem = storage_error(err, target.path, target.needed, total=target.total,
                                at_least=target.at_least)
        if problem is None or problem is err:
            raise
        raise problem from err


def check_space(path, needed, *, largest=None, largest_path=None):
    """Refuse, before anything is written, a write of ``needed`` bytes to ``path`` (a file or
    a directory of files, ``largest`` bytes the biggest, ``largest_path``) that cannot fit:
    fewer bytes free on its filesystem than ``needed`` and a small margin, or a file over
    the size limit (the message then names ``largest_path``).

    Raises
    ------
    StorageError
        ``PATH: no space on the device for it (X free, Y needed); nothing was written: ...``
        (``written`` is False).
    """
    limit, largest = file_size_limit(), needed if largest is None else largest
    if limit is not None and largest > limit:
        biggest = largest_path or path
        raise StorageError(_message(biggest, errno.EFBIG, largest, None, refused=True),
                           path=biggest, code=errno.EFBIG, needed=largest, written=False)
    free = free_bytes(path)
    if free is None or free >= needed + SPACE_MARGIN_BYTES + needed * SPACE_MARGIN_SHARE:
        return
    raise StorageError(_message(path, errno.ENOSPC, needed, free, refused=True), path=path,
                       code=errno.ENOSPC, needed=needed, free=free, written=False)


def _array_bytes(array):
    """The bytes ``mx.nd.save`` writes for one NDArray: its header (storage type, shape,
    context, dtype) and data (a sparse array: its data and index arrays)."""
    import numpy as np
    parts = [array]
    if getattr(array, 'stype', 'default') != 'default':
        parts = [array.data] + [getattr(array, key) for key in ('indices', 'indptr')
                                if hasattr(array, key)]
    data = sum(part.size * np.dtype(part.dtype).itemsize for part in parts)
    return 24 + 8 * len(array.shape) + data


def ndarray_file_bytes(arrays):
    """The size of the file ``mx.nd.save`` writes for ``arrays`` (a dict of NDArrays, a list,
    or one NDArray), from their shapes and dtypes: nothing is copied or synchronised."""
    if isinstance(arrays, dict):
        names, values = list(arrays), list(arrays.values())
    else:
        names, values = [], list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]
    return 24 + sum(_array_bytes(a) for a in values) + \
        8 + sum(8 + len(str(n).encode('utf-8')) for n in names)


def save_ndarrays(path, arrays, *, name=None, check=True):
    """``mx.nd.save(path, arrays)`` atomically, with the checks of a full disk.

    Parameters
    ----------
    path : str
    arrays : dict of NDArray, list of NDArray or NDArray
    name : str, optional
        The file as the user knows it, in messages (e.g. where a staging directory will be
        renamed to); default ``path``.
    check : bool, default True
        Refuse before writing where the file cannot fit (:func:`check_space`); False where
        the caller checked the whole of what it writes.

    Raises
    ------
    StorageError
        No room (before or during the write); the partial file is removed.
    """
    import mxnet as mx  # a dependency, but only the writers of arrays need it
    needed = ndarray_file_bytes(arrays)
    if check:
        check_space(name or path, needed)
    with writing(name or path, needed):
        atomic_write(path, lambda tmp: mx.nd.save(tmp, arrays), needed=needed)


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
        owner = f'{os.getpid()}\n'.encode('ascii')
        try:
            with writing(self.path, len(owner)):  # a full disk: one line, at the start
                os.ftruncate(fd, 0)
                os.write(fd, owner)
        except BaseException:
            os.close(fd)
            raise
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
