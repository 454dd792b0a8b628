"""Process environment: OpenMP thread defaults and a clear message when MXNet is missing.

MXNet sizes its OpenMP pool from ``OMP_NUM_THREADS`` when it is first imported and
otherwise uses half of the logical CPUs, which halves throughput on a 2-core machine.
gluonbert therefore sets ``OMP_NUM_THREADS`` to the number of physical cores available
to this process, before importing MXNet, unless the user has set it. If MXNet was
imported first, its engine threads keep MXNet's default (``MXSetNumOMPThreads`` only
affects the calling thread, measured: 251 against 494 GFLOP/s on 2 cores), so gluonbert
warns and says how to fix it: import gluonbert first, or set ``OMP_NUM_THREADS``.
Set ``OMP_NUM_THREADS`` yourself to override; ``GLUONBERT_NO_THREAD_DEFAULTS=1`` leaves
MXNet's own default alone.
"""
import contextlib
import os
import sys

__all__ = ['physical_cores', 'default_num_threads', 'apply_thread_defaults', 'require_mxnet',
           'quiet_native_stderr']

INSTALL_HINT = ("install gluonbert with an MXNet flavour: pip install 'gluonbert[cpu]' "
                "(or 'gluonbert[cu112]' / 'gluonbert[cu117]' for CUDA 11.2 / 11.7 GPUs)")


def physical_cores():
    """Physical cores among the CPUs this process may run on (hyper-threads counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for cpu in cpus:
        base = f'/sys/devices/system/cpu/cpu{cpu}/topology/'
        try:
            with open(base + 'physical_package_id') as f:
                package = f.read().strip()
            with open(base + 'core_id') as f:
                core = f.read().strip()
            cores.add((package, core))
        except OSError:
            cores.add(('cpu', cpu))
    return max(1, len(cores))


def default_num_threads():
    """The OpenMP thread count gluonbert uses: OMP_NUM_THREADS if set, else physical cores."""
    value = os.environ.get('OMP_NUM_THREADS', '').strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return physical_cores()


def apply_thread_defaults():
    """Set the OpenMP thread count (see module docstring). Returns the count in effect."""
    if os.environ.get('GLUONBERT_NO_THREAD_DEFAULTS') == '1':
        return None
    threads = default_num_threads()
    if sys.modules.get('mxnet') is None:
        os.environ.setdefault('OMP_NUM_THREADS', str(threads))
    elif 'OMP_NUM_THREADS' not in os.environ:
        # MXNet already sized its engine's OpenMP pool from its own default (half the
        # logical CPUs), and that cannot be changed in this process any more.
        if threads > 1:
            import warnings
            warnings.warn(f'mxnet was imported before gluonbert, so MXNet keeps its default '
                          f'OpenMP thread count (half the CPUs) instead of the {threads} '
                          f'physical cores; import gluonbert first, or set '
                          f'OMP_NUM_THREADS={threads} before starting Python',
                          RuntimeWarning, stacklevel=3)
        return None
    return threads


def require_mxnet():
    """Import MXNet or raise one ImportError that says what to install."""
    try:
        import mxnet  # noqa: F401
    except ImportError as err:
        raise ImportError(f'gluonbert needs MXNet 1.9.1, which is not installed: '
                          f'{INSTALL_HINT}') from err
    except AttributeError as err:
        if 'numpy' in str(err) or "'bool'" in str(err):
            raise ImportError('MXNet 1.9.1 does not work with numpy 1.24 or newer: '
                              'pip install "numpy<1.24"') from err
        raise


apply_thread_defaults()


@contextlib.contextmanager
def quiet_native_stderr():
    """Within the block, what native code (MXNet's C++ logging, oneDNN) writes to file
    descriptor 2 is discarded; Python's own stderr and raised errors are unaffected, and
    descriptor 2 is restored afterwards, also on errors. For notes that would only confuse
    (the int8 pass's "no int8 kernel for tanh", the bf16 probe's failed primitive)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w', encoding='utf-8') as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
