"""The exceptions gluonbert raises for problems a user can fix.

Every error that comes from what a user gave (flags, files, data, checkpoints, the machine)
is a :class:`GluonbertError`. The console commands print such an error as one line and exit
with status 2; any other exception is a bug and keeps its traceback (exit status 1).

The subclasses also derive from the built-in exception a Python caller would expect
(``ValueError``, ``RuntimeError``, ``ImportError``, ``OSError``), so ``except ValueError``
keeps working.
This module imports nothing: every other module may use it.
"""

__all__ = ['GluonbertError', 'UsageError', 'DataError', 'CheckpointError', 'ModelError',
           'UnsupportedHardwareError', 'EnvironmentProblem', 'StorageError']


class GluonbertError(Exception):
    """A problem the user can fix; its message is one line that says what and where."""


class UsageError(GluonbertError, ValueError):
    """Bad arguments or flags."""


class DataError(GluonbertError, ValueError):
    """Bad input data; the message names the file (and line) and what was expected."""


class CheckpointError(GluonbertError, ValueError):
    """A checkpoint or saved run that cannot be used: damaged, of another run, or unsafe."""


class ModelError(GluonbertError, ValueError):
    """A model that cannot be loaded or saved: missing, damaged or unsupported files."""


class UnsupportedHardwareError(GluonbertError, RuntimeError):
    """The machine lacks what was asked for (a CPU feature, GPU kernels); the message says
    what is missing and what to use instead."""


class EnvironmentProblem(GluonbertError, ImportError):
    """A missing optional package or tool; the message says what to install."""


class StorageError(GluonbertError, OSError):
    """The disk is full or a write was refused (no space, a disk quota, a file size limit).

    The message is one line naming the file and the space it needs; ``path``, ``needed``
    (bytes, None if unknown: what the message says is needed), ``file_bytes`` (the file's
    own) and ``free`` (bytes, None if unknown) say the same for a program. ``errno`` is
    ``ENOSPC``, ``EDQUOT`` or ``EFBIG`` (what the write met), and ``written`` is False when
    the write was refused before anything was written.
    """

    def __init__(self, message, *, path=None, code=None, needed=None, free=None,
                 written=True):
        super().__init__(message)
        self.path, self.needed, self.free, self.written = path, needed, free, written
        self.file_bytes = needed
        self.errno, self.filename = code, path  # as an OSError of the file would say

    def __str__(self):
        return self.args[0]
