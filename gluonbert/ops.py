"""gluonbert's fused CPU operators: LayerNorm, the AdamW update and the clipping norm,
compiled once per machine.

MXNet 1.9's CPU kernels for these hot spots of fine-tuning are generic code: the LayerNorm
backward (a chain of broadcast reductions), the AdamW update and ``multi_sum_sq``.
``gluonbert/csrc/fused_ops.cc`` does the same arithmetic in one vectorised, OpenMP-parallel
pass each (measured on 2 cores: LayerNorm forward+backward at 8x128x768 9.8 ms -> 0.36 ms;
AdamW over MiniLM's 22.5M parameters 45 ms -> 12 ms, all arrays in one call; their sum of
squares 9.6 -> 3.5 ms). It is an MXNet extension library (``lib_api.h``,
shipped in the mxnet wheel), built with the system C++ compiler into
``~/.cache/gluonbert/ops`` (``GLUONBERT_CACHE_DIR`` overrides) by ``scripts/bootstrap.sh``
or on first use (about 5 s), and loaded when gluonbert is imported.

Used by :class:`gluonbert.layers.LayerNorm` (float32 on CPU), the ``adamw`` optimizer
(float32 on CPU, no ``clip_gradient``) and gradient clipping on CPU; everything else runs
MXNet's own operators. Graphs
traced inside :func:`builtin_ops` use MXNet's operators only: :mod:`gluonbert.fast` traces
its inference and export graphs there, so exported models load with plain MXNet.

``GLUONBERT_FUSED_OPS=0`` turns the library off. Without a C++ compiler, or if the build
fails, gluonbert says why once and uses MXNet's operators.

    python -c 'import gluonbert.ops as o; o.main()'   # build if needed, load, say where
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
import numpy as np

from ._env import thread_flag

__all__ = ['OPS', 'load', 'status', 'build', 'library_path', 'builtin_ops',
           'inference_graph', 'fused_for', 'fused_dropout']

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'fused_ops.cc')
OPS = ('gluonbert_layer_norm', 'gluonbert_multi_adamw_update', 'gluonbert_multi_sum_sq',
       'gluonbert_dropout')
# -fno-math-errno: sqrt vectorises (the same IEEE results; AdamW 21 -> 10 ms for 22.5M
# parameters, now bound by memory). -Wl,-Bsymbolic: the library's own copy of lib_api.cc
# must not bind to libmxnet's, which Horovod exposes by loading libmxnet RTLD_GLOBAL
# (otherwise: "free(): invalid pointer").
CXXFLAGS = ('-O3', '-march=native', '-fno-math-errno', '-fopenmp', '-shared', '-fPIC',
            '-Wl,-Bsymbolic', '-std=c++17')

_LOCK = threading.RLock()
_STATE = {'loaded': False, 'reason': 'not loaded yet', 'tried': False}
_LOCAL = threading.local()


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
    for part in (mx.__version__, _compiler() or '', ' '.join(CXXFLAGS), _cpu_signature(),
                 sys.platform):
        digest.update(part.encode('utf-8'))
    return os.path.join(_cache_dir(), f'fused_ops-{digest.hexdigest()[:16]}.so')


def build(*, quiet=False):
    """Compile the library unless it exists; returns its path. Raises RuntimeError on failure."""
    path = library_path()
    if os.path.exists(path):
        return path
    compiler = _compiler()
    if not compiler:
        raise RuntimeError('no C++ compiler found (install g++ or set CXX)')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mxnet_dir = _mxnet_dir()
    if not quiet:
        print('gluonbert: compiling its fused CPU operators (once per machine, about 5 s)',
              file=sys.stderr, flush=True)
    # written next to the target, then renamed: concurrent builds cannot leave a torn file
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    command = [compiler, *CXXFLAGS, '-I', os.path.join(mxnet_dir, 'include'), SOURCE,
               os.path.join(mxnet_dir, 'src', 'lib_api.cc'), '-o', tmp]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f'{os.path.basename(compiler)} failed: '
                               f'{done.stderr.strip().splitlines()[-1:] or done.returncode}')
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _amp_initialized():
    amp_module = sys.modules.get('mxnet.contrib.amp.amp')
    return bool(getattr(amp_module, '_amp_initialized', False))


def _register_python_functions():
    """Make mx.nd.<op> and mx.sym.<op> for the library's operators.

    ``mx.library.load`` would regenerate every operator's Python function (0.3 s), which
    would also undo AMP's wrappers; only these operators are new.
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


def load(*, build_if_missing=True, quiet=False):
    """Load the library into MXNet (once); True when its operators are available.

    Never raises: when the library cannot be built or loaded, :func:`status` says why and
    gluonbert uses MXNet's own operators. Loading after AMP was initialized is refused
    (AMP's operator wrappers are made at ``amp.init``; gluonbert loads first itself).
    """
    with _LOCK:
        if _STATE['loaded']:
            return True
        if os.environ.get('GLUONBERT_FUSED_OPS', '1') == '0':
            _STATE['reason'] = 'turned off by GLUONBERT_FUSED_OPS=0'
            return False
        if _STATE['tried'] and (not build_if_missing or _STATE['reason'] != 'not built yet'):
            return False
        if _amp_initialized():
            _STATE['reason'] = 'AMP was initialized before the library was loaded'
            return False
        try:
            path = library_path()
            if not os.path.exists(path):
                if not build_if_missing:
                    _STATE['reason'] = 'not built yet'
                    _STATE['tried'] = True
                    return False
                path = build(quiet=quiet)
            from mxnet.base import _LIB, check_call, mx_uint
            check_call(_LIB.MXLoadLib(ctypes.c_char_p(path.encode('utf-8')), mx_uint(0)))
            _register_python_functions()
        except (RuntimeError, OSError, mx.MXNetError) as err:
            _STATE['tried'] = True
            _STATE['reason'] = f'{type(err).__name__}: {err}'.splitlines()[0]
            warnings.warn(f"gluonbert's fused CPU operators are not available "
                          f"({_STATE['reason']}); using MXNet's operators, which are slower",
                          RuntimeWarning, stacklevel=2)
            return False
        _STATE.update(loaded=True, tried=True, reason=f'loaded from {path}')
        return True


def status():
    """One line: loaded from where, or why not."""
    return _STATE['reason']


def builtin_ops():
    """Within this block, graphs are traced with MXNet's own operators only (for graphs that
    are converted by AMP or the quantizer, or exported for plain MXNet)."""
    return thread_flag(_LOCAL, 'builtin')


def inference_graph():
    """Within this block, graphs are traced for inference: dropout (an identity there) stays
    MXNet's operator, which needs no mask."""
    return thread_flag(_LOCAL, 'inference')


def fused_dropout():
    """Whether a dropout traced now uses the fused operator: on a CPU context (MXNet makes the
    input's context current while tracing), library loaded, outside :func:`builtin_ops` and
    :func:`inference_graph`."""
    if getattr(_LOCAL, 'builtin', False) or getattr(_LOCAL, 'inference', False):
        return False
    return mx.context.current_context().device_type == 'cpu' and load()


def fused_for(parameter):
    """Whether a block owning ``parameter`` computes with the fused operators: float32, on
    CPU contexts only, library loaded (built on first use), not inside :func:`builtin_ops`."""
    if getattr(_LOCAL, 'builtin', False) or np.dtype(parameter.dtype) != np.float32:
        return False
    try:
        contexts = parameter.list_ctx()
    except RuntimeError:  # not initialized: no context yet
        return False
    if not contexts or any(ctx.device_type != 'cpu' for ctx in contexts):
        return False
    return load()


def main():
    """Build (if needed) and load; print the outcome. Exits 1 if the library is unusable."""
    ok = load(quiet=True)
    print(f'gluonbert fused CPU operators: {status()}')
    if not ok:
        sys.exit(1)
