"""What this machine's CPU can do, and the one check every bfloat16 path goes through.

oneDNN (MXNet 1.9's CPU backend) runs bfloat16 matrix products only on CPUs with native
bfloat16 instructions (AVX512_BF16 or AMX-BF16). Elsewhere, for example on an AVX2-only
AMD EPYC, it fails deep inside a kernel with "could not create a primitive descriptor
iterator". gluonbert therefore asks :func:`bf16_support` before it builds a bfloat16 graph
or turns on bfloat16 AMP, and raises :class:`~gluonbert.errors.UnsupportedHardwareError`
with one line that says what the CPU lacks and what to use instead.

The check reads the CPU flags and, where they promise bfloat16, confirms it with a tiny
oneDNN bfloat16 product, run once per process (a hypervisor may show flags its guests
cannot use). ``GLUONBERT_DISABLE_BF16=1`` makes the check answer "absent", to try the
float32/int8 paths or the refusal on any machine.

int8 needs no check: oneDNN's int8 kernels run on AVX2 too (faster with AVX512_VNNI,
AVX_VNNI or AMX-INT8, which :func:`cpu_info` reports). Without those int8 dot-product
instructions, oneDNN sums pairs of u8 x s8 products in 16 bits, which saturate: see
:func:`gluonbert.sysinfo.fastest_path` for what that means for ``--fast``.

``GLUONBERT_CPU_FEATURES=avx2,fma`` (comma-separated, /proc/cpuinfo's names) makes gluonbert
see only those of the CPU's flags: it can hide features, never add any. With
``DNNL_MAX_CPU_ISA=AVX2`` (oneDNN's own switch) and ``GLUONBERT_OPS_MARCH=haswell``
(:mod:`gluonbert.ops`) it lets an AVX-512 machine run as an AVX2-only one would, which is
what the AVX2 lane of ``.ci/run`` does.
"""
import dataclasses
import functools
import os
import platform
import shutil
import subprocess

from ._env import quiet_native_stderr
from .errors import UnsupportedHardwareError

__all__ = ['CPUInfo', 'cpu_info', 'bf16_support', 'has_native_bf16', 'require_bf16',
           'REPORTED_FLAGS', 'DISABLE_BF16_ENV', 'CPU_FEATURES_ENV', 'require_gpu_kernels',
           'gpu_compute_capabilities']

# The flags that decide gluonbert's fast paths, in the names Linux's /proc/cpuinfo uses.
REPORTED_FLAGS = ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_int8',
                  'avx512_vnni', 'avx_vnni')
BF16_FLAGS = ('avx512_bf16', 'amx_bf16')
DISABLE_BF16_ENV = 'GLUONBERT_DISABLE_BF16'
CPU_FEATURES_ENV = 'GLUONBERT_CPU_FEATURES'
_FLAG_NAMES = {'avx2': 'AVX2', 'fma': 'FMA', 'avx512f': 'AVX-512F',
               'avx512_bf16': 'AVX512_BF16', 'amx_bf16': 'AMX-BF16', 'amx_int8': 'AMX-INT8',
               'avx512_vnni': 'AVX512_VNNI', 'avx_vnni': 'AVX_VNNI'}


@dataclasses.dataclass(frozen=True)
class CPUInfo:
    """The CPU's model name and feature flags (lower case, as in /proc/cpuinfo)."""
    model: str
    flags: frozenset

    def has(self, flag):
        return flag in self.flags

    def features(self):
        """The reported flags this CPU has, in display names: ``['AVX2', 'AVX-512F', ...]``."""
        return [_FLAG_NAMES[f] for f in REPORTED_FLAGS if f in self.flags]

    def describe(self):
        """One line: ``'AMD EPYC 9B45 (AVX2, FMA, AVX-512F, AVX512_BF16, AVX512_VNNI)'``."""
        return f'{self.model} ({", ".join(self.features()) or "none of " + "/".join(BF16_FLAGS)})'


def _parse_cpuinfo(text):
    model, flags = '', set()
    for line in text.splitlines():
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and not model:
            model = value.strip()
        elif key == 'flags' and not flags:
            flags = set(value.split())
    return model, flags


def _feature_mask(value):
    """The flags ``GLUONBERT_CPU_FEATURES`` leaves visible (None: unset, all of them)."""
    if value is None or not value.strip():
        return None
    return {flag.strip().lower() for flag in value.split(',') if flag.strip()}


@functools.lru_cache(maxsize=None)
def cpu_info():
    """This machine's :class:`CPUInfo` (read once; from /proc/cpuinfo on Linux), less the
    flags that ``GLUONBERT_CPU_FEATURES`` hides."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            model, flags = _parse_cpuinfo(f.read())
    except OSError:  # not Linux: the model name only, so no native bf16 is assumed
        model, flags = '', set()
    visible = _feature_mask(os.environ.get(CPU_FEATURES_ENV))
    if visible is not None:
        flags = flags & visible
    return CPUInfo(model or platform.processor() or platform.machine() or 'unknown CPU',
                   frozenset(flags))


@functools.lru_cache(maxsize=None)
def _onednn_bf16_probe():
    """``None`` if oneDNN runs a small bfloat16 FullyConnected here, else why not."""
    import mxnet as mx
    from mxnet.contrib.amp.amp import bfloat16
    try:
        with quiet_native_stderr():  # oneDNN logs the failure too; the reason says it
            x = mx.nd.amp_cast(mx.nd.ones((2, 16)), dtype=bfloat16)
            w = mx.nd.amp_cast(mx.nd.ones((4, 16)), dtype=bfloat16)
            out = mx.nd.FullyConnected(x, w, num_hidden=4, no_bias=True)
            total = float(mx.nd.amp_cast(out, dtype='float32').sum().asscalar())
    except mx.base.MXNetError as err:
        first_line = (str(err).strip().splitlines() or ['no message'])[0]
        if first_line.startswith('MXNetError: '):
            first_line = first_line[len('MXNetError: '):]
        return f'oneDNN could not run a bfloat16 matrix product ({first_line[:120]})'
    if total != 2 * 4 * 16:
        return f'oneDNN computed a wrong bfloat16 matrix product ({total} instead of 128)'
    return None


def bf16_support():
    """``(True, '')`` if bfloat16 runs natively here, else ``(False, reason)``."""
    if os.environ.get(DISABLE_BF16_ENV, '').strip() not in ('', '0'):
        return False, f'bfloat16 is turned off by {DISABLE_BF16_ENV}=1'
    cpu = cpu_info()
    if not any(cpu.has(flag) for flag in BF16_FLAGS):
        return False, (f'this CPU ({cpu.describe()}) has no native bfloat16 '
                       f'(neither AVX512_BF16 nor AMX-BF16)')
    problem = _onednn_bf16_probe()
    if problem:
        return False, f'{problem} on this CPU ({cpu.model})'
    return True, ''


def has_native_bf16():
    """Whether bfloat16 runs natively on this machine (see :func:`bf16_support`)."""
    return bf16_support()[0]


def require_bf16(what='bfloat16', instead='use float32, or int8 for speed'):
    """Raise :class:`UnsupportedHardwareError` naming ``what`` unless bfloat16 is native."""
    supported, reason = bf16_support()
    if not supported:
        raise UnsupportedHardwareError(f'{what} needs native bfloat16, but {reason}; {instead}')


GPU_README = 'see the README section "GPUs"'


def gpu_compute_capabilities():
    """Compute capabilities of the NVIDIA GPUs (``['9.0', ...]``) from ``nvidia-smi``, or
    [] where there is none (or no driver)."""
    smi = shutil.which('nvidia-smi')
    if not smi:
        return []
    try:
        done = subprocess.run([smi, '--query-gpu=compute_cap', '--format=csv,noheader'],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if done.returncode != 0:
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _gpu_probe(ctx):
    """Run one tiny kernel on ``ctx``; None when it ran, else MXNet's first error line."""
    import mxnet as mx
    try:
        with quiet_native_stderr():
            value = float((mx.nd.ones((2, 2), ctx=ctx) * 2).sum().asscalar())
    except mx.base.MXNetError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        meaningful = [line for line in lines if not line.startswith(('Traceback', '['))]
        return (meaningful or lines or ['no message'])[-1][:200]
    return None if value == 8.0 else f'a test kernel computed {value} instead of 8'


def require_gpu_kernels(ctx, capability=None):
    """Raise :class:`UnsupportedHardwareError` unless MXNet runs kernels on GPU ``ctx``.

    PyPI's ``mxnet-cu112``/``mxnet-cu117`` wheels carry no kernels for compute capability
    9.0 (H100/H200): there every operator fails with "no kernel image is available for
    execution on the device", deep inside the first forward pass. One tiny kernel is run
    here instead, and its failure becomes one line that names the GPU's compute capability
    (``capability``, default from nvidia-smi) and points to the README. A CPU context
    passes.
    """
    if ctx.device_type != 'gpu':
        return
    problem = _gpu_probe(ctx)
    if problem is None:
        return
    if capability is None:
        found = gpu_compute_capabilities()
        capability = found[ctx.device_id] if ctx.device_id < len(found) else None
    which = f'GPU {ctx.device_id}' + (f' (compute capability {capability})' if capability
                                      else '')
    if 'no kernel image' in problem:
        raise UnsupportedHardwareError(
            f'this MXNet build has no CUDA kernels for {which}: PyPI\'s mxnet-cu112/cu117 '
            f'wheels stop before compute capability 9.0 (H100/H200); build MXNet for this GPU '
            f'or run on CPU ({GPU_README})')
    raise UnsupportedHardwareError(f'MXNet cannot run on {which}: {problem} ({GPU_README})')
