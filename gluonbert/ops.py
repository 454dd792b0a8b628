"""gluonbert's fused CPU operators: LayerNorm, dropout, the AdamW update, the clipping norm
and the self-attention products, compiled once per machine.

MXNet 1.9's CPU kernels for these hot spots of fine-tuning are generic code: the LayerNorm
backward (a chain of broadcast reductions), the AdamW update and ``multi_sum_sq``.
``gluonbert/csrc/fused_ops.cc`` does the same arithmetic in one vectorised, OpenMP-parallel
pass each (the AdamW update over all arrays in one call; figures in
docs/fused-operators.md). It is an MXNet extension library (``lib_api.h``,
shipped in the mxnet wheel), built with the system C++ compiler into
``~/.cache/gluonbert/ops`` (``GLUONBERT_CACHE_DIR`` overrides) by ``scripts/bootstrap.sh``
or ``gluonbert-ops build`` (about 10 s), never at import or during a forward pass. When
gluonbert is imported it loads the library if it is built and intact: the cache keeps the
library's SHA-256 beside it, and a library that does not match (truncated, damaged), or a
cache that belongs to another user or is writable by everyone, is not loaded.

Which blocks use it is decided when they are built, never while a graph is traced: the
'fused' implementations of :mod:`gluonbert.kernels` call it (a model's
``BERTConfig.kernels`` names them; :func:`resolve_kernels` turns 'auto' into 'fused' or
'mxnet') and compute with it in float32 on CPU; the ``adamw`` optimizer and gradient
clipping take the same choice. Graphs for export are traced with ``kernels='mxnet'``
(:func:`gluonbert.model.with_kernels`), so exported models load with plain MXNet.

``GLUONBERT_FUSED_OPS=0`` turns the library off. When it is not built, gluonbert uses
MXNet's operators (:func:`status` says so); when it is damaged or fails to load, gluonbert
also warns once.

    gluonbert-ops build    # build if needed (or rebuild a damaged one), load, say where
    gluonbert-ops status   # loaded from where, or why not
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings

import mxnet as mx

from ._io import file_digest, write_text
from .config import KERNELS
from .errors import EnvironmentProblem

__all__ = ['OPS', 'MARCH_ENV', 'load', 'status', 'build', 'library_path', 'march',
           'resolve_kernels']

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'fused_ops.cc')
OPS = ('gluonbert_layer_norm', 'gluonbert_multi_adamw_update', 'gluonbert_multi_sum_sq',
       'gluonbert_dropout', 'gluonbert_selfatt_qk', 'gluonbert_selfatt_valatt')
# -fno-math-errno: sqrt vectorises (the same IEEE results; AdamW becomes bound by
# memory). -Wl,-Bsymbolic: the library's own copy of lib_api.cc
# must not bind to libmxnet's, which Horovod exposes by loading libmxnet RTLD_GLOBAL
# (otherwise: "free(): invalid pointer").
CXXFLAGS = ('-O3', '-fno-math-errno', '-fopenmp', '-shared', '-fPIC', '-Wl,-Bsymbolic',
            '-std=c++17')
# The CPU the library is compiled for (gcc's -march): this machine's by default. Another
# (e.g. 'haswell': AVX2 and FMA, no AVX-512) has a cache entry of its own, for running as
# an older CPU would (the AVX2 lane of .ci/run).
MARCH_ENV = 'GLUONBERT_OPS_MARCH'
_MARCH_CHARS = frozenset('abcdefghijklmnopqrstuvwxyz0123456789-_.')

BUILD_TIMEOUT_S = 300
NOT_BUILT = 'not built yet (build once per machine: gluonbert-ops build)'

_LOCK = threading.RLock()
_STATE = {'loaded': False, 'reason': 'not loaded yet', 'tried': False}


def _mxnet_dir():
    return os.path.dirname(os.path.abspath(mx.__file__))


def _cpu_signature():
    """The CPU's model and feature flags (the library is compiled with -march=native)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            lines = [line for line in f if line.startswith(('model name', 'flags'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def march():
    """The ``-march`` the library is (to be) compiled for: ``GLUONBERT_OPS_MARCH`` or
    ``'native'``."""
    value = os.environ.get(MARCH_ENV, '').strip() or 'native'
    if not set(value) <= _MARCH_CHARS:
        raise EnvironmentProblem(f'{MARCH_ENV}={value!r} is not a CPU name for -march '
                                 f'(e.g. native, haswell, skylake-avx512)')
    return value


def _flags():
    return (f'-march={march()}', *CXXFLAGS)


def _compiler():
    return os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')


def _cache_dir():
    root = os.environ.get('GLUONBERT_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'),
        'gluonbert')
    return os.path.join(root, 'ops')


def library_path():
    """Where the library for this source, MXNet build, compiler and CPU lives."""
    digest = hashlib.sha1()
    with open(SOURCE, 'rb') as f:
        digest.update(f.read())
    with open(os.path.join(_mxnet_dir(), 'include', 'mxnet', 'lib_api.h'), 'rb') as f:
        digest.update(f.read())
    for part in (mx.__version__, _compiler() or '', ' '.join(_flags()), _cpu_signature(),
                 sys.platform):
        digest.update(part.encode('utf-8'))
    target = march()
    tag = '' if target == 'native' else f'{target}-'
    return os.path.join(_cache_dir(), f'fused_ops-{tag}{digest.hexdigest()[:16]}.so')


def _checksum_path(path):
    return path + '.sha256'


def _unusable_cache(directory):
    """Why ``directory`` must not hold code this process loads, or None if it may: it must
    belong to this user and not be writable by others (anyone who can write there could
    put a library in that gluonbert would load)."""
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        return None  # created by this user when built
    if hasattr(os, 'getuid') and info.st_uid != os.getuid():
        return (f'{directory} belongs to another user (uid {info.st_uid}); set '
                f'GLUONBERT_CACHE_DIR to a directory of your own')
    if info.st_mode & 0o002:
        return (f'{directory} is writable by every user; chmod o-w it, or set '
                f'GLUONBERT_CACHE_DIR')
    return None


def _damage(path):
    """Why the library at ``path`` must not be loaded (missing, no checksum, not the bytes
    that were built), or None when it is intact. A truncated shared library would kill the
    process with SIGBUS when loaded, so it is checked first."""
    if not os.path.exists(path):
        return 'not built yet'
    try:
        with open(_checksum_path(path), encoding='ascii') as f:
            expected = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return 'its checksum file is missing or unreadable'
    if file_digest(path) != expected:
        return 'it does not match its checksum (truncated or damaged)'
    return None


def build(*, quiet=False, timeout=BUILD_TIMEOUT_S):
    """Compile the library unless an intact one is cached; returns its path.

    The library and then its SHA-256 are written atomically beside each other; a cached
    library that does not match its checksum is rebuilt. Raises RuntimeError on failure
    (no compiler, a compiler error, more than ``timeout`` seconds, an unsafe cache).
    """
    path = library_path()
    directory = os.path.dirname(path)
    unsafe = _unusable_cache(directory)
    if unsafe:
        raise RuntimeError(unsafe)
    if _damage(path) is None:
        return path
    compiler = _compiler()
    if not compiler:
        raise RuntimeError('no C++ compiler found (install g++ or set CXX)')
    os.makedirs(directory, mode=0o755, exist_ok=True)
    mxnet_dir = _mxnet_dir()
    if not quiet:
        print('gluonbert: compiling its fused CPU operators (once per machine, about 10 s)',
              file=sys.stderr, flush=True)
    # written next to the target, then renamed: concurrent builds cannot leave a torn file
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=directory)
    os.close(fd)
    command = [compiler, *_flags(), '-I', os.path.join(mxnet_dir, 'include'), SOURCE,
               os.path.join(mxnet_dir, 'src', 'lib_api.cc'), '-o', tmp]
    try:
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f'{os.path.basename(compiler)} took more than {timeout} s; '
                               f'stopped') from err
        if done.returncode != 0:
            raise RuntimeError(f'{os.path.basename(compiler)} failed: '
                               f'{done.stderr.strip().splitlines()[-1:] or done.returncode}')
        checksum = file_digest(tmp)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        # the checksum last: a library without one is never loaded, only rebuilt
        write_text(_checksum_path(path), checksum + '\n')
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with _LOCK:  # a later load() tries again
        _STATE.update(tried=False)
    return path


def _amp_initialized():
    amp_module = sys.modules.get('mxnet.contrib.amp.amp')
    # private: AMP records its initialisation in a private module attribute only
    return bool(getattr(amp_module, '_amp_initialized', False))


def _register_python_functions():
    """Make mx.nd.<op> and mx.sym.<op> for the library's operators.

    ``mx.library.load`` would regenerate every operator's Python function (0.3 s), which
    would also undo AMP's wrappers; only these operators are new. That takes MXNet's
    private C handle and function factories (the ones ``mx.library.load`` uses).
    """
    from mxnet.base import _LIB, OpHandle, c_str, check_call
    from mxnet.ndarray.register import _make_ndarray_function
    from mxnet.symbol.register import _make_symbol_function
    for name in OPS:
        handle = OpHandle()
        check_call(_LIB.NNGetOpHandle(c_str(name), ctypes.byref(handle)))
        for package, make in (('ndarray', _make_ndarray_function),
                              ('symbol', _make_symbol_function)):
            function = make(handle, name, name)
            for module in (f'mxnet.{package}.op', f'mxnet.{package}'):
                function.__module__ = module
                setattr(sys.modules[module], name, function)


def _error_line(err):
    """The line of an error that says what happened (MXNet's start with a C++ traceback)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    meaningful = [line for line in lines if not line.startswith(('Traceback', '['))]
    return f'{type(err).__name__}: {(meaningful or lines or ["no message"])[-1]}'


def load():
    """Load the built library into MXNet (once); True when its operators are available.

    Never compiles (:func:`build` does, called by ``scripts/bootstrap.sh`` and
    ``gluonbert-ops build``) and never raises: when the library is not built, damaged, in an
    unsafe cache or fails to load, :func:`status` says why and gluonbert uses MXNet's own
    operators. Loading after AMP was initialized is refused (AMP makes its operator
    wrappers at ``amp.init``; gluonbert loads first itself).
    """
    with _LOCK:
        if _STATE['loaded']:
            return True
        if _STATE['tried']:
            return False
        _STATE['tried'] = True
        if os.environ.get('GLUONBERT_FUSED_OPS', '1') == '0':
            _STATE['reason'] = 'turned off by GLUONBERT_FUSED_OPS=0'
            return False
        if _amp_initialized():
            _STATE['reason'] = 'AMP was initialized before the library was loaded'
            return False
        try:
            path = library_path()
            problem = _unusable_cache(os.path.dirname(path))
            if problem is None:
                problem = _damage(path)
                if problem == 'not built yet':
                    _STATE['reason'] = NOT_BUILT
                    return False
                if problem:
                    problem = f'{path}: {problem}; rebuild it with: gluonbert-ops build'
            if problem:
                raise RuntimeError(problem)
            # MXNet's C handle: mx.library.load would also regenerate every operator's
            # Python function (see _register_python_functions)
            from mxnet.base import _LIB, check_call, mx_uint
            check_call(_LIB.MXLoadLib(ctypes.c_char_p(path.encode('utf-8')), mx_uint(0)))
            _register_python_functions()
        except (RuntimeError, OSError, mx.MXNetError) as err:
            _STATE['reason'] = _error_line(err)
            warnings.warn(f"gluonbert's fused CPU operators are not available "
                          f"({_STATE['reason']}); using MXNet's operators, which are slower",
                          RuntimeWarning, stacklevel=2)
            return False
        built_for = '' if march() == 'native' else f' (built for -march={march()})'
        _STATE.update(loaded=True, reason=f'loaded from {path}{built_for}')
        return True


def status():
    """One line: loaded from where, or why not."""
    return _STATE['reason']


def resolve_kernels(kernels):
    """The operators a block computes LayerNorm and dropout with: ``'fused'`` or ``'mxnet'``.

    ``'auto'`` is ``'fused'`` when the library is loaded, else ``'mxnet'``; ``'fused'``
    without the library is an :class:`~gluonbert.errors.EnvironmentProblem`. Called when
    a block is built: the answer is fixed then, never looked up while a graph is traced.
    """
    if kernels not in KERNELS:
        raise ValueError(f'kernels must be one of {KERNELS}, got {kernels!r}')
    if kernels == 'mxnet':
        return 'mxnet'
    if load():
        return 'fused'
    if kernels == 'auto':
        return 'mxnet'
    raise EnvironmentProblem(f"kernels='fused' needs gluonbert's fused CPU operators, which "
                             f"are not available ({status()}); build them with gluonbert-ops "
                             f"build, or use kernels='mxnet'")
