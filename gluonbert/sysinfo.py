"""The environment report: what this machine, this MXNet build and gluonbert can do.

``gluonbert-info`` prints it (users paste it into bug reports); :func:`report` returns it
as a dict, :func:`format_report` as text. It names the CPU and its features, MXNet's build
features (oneDNN, CUDA), the GPUs, whether gluonbert's fused operators are loaded, and the
inference paths this machine runs (and the one ``--fast`` picks, :func:`fastest_path`).
"""
import os
import platform
import sys

from . import ops
from ._env import default_num_threads, physical_cores
from ._version import __version__
from .hardware import bf16_support, cpu_info, gpu_compute_capabilities

__all__ = ['report', 'format_report', 'fastest_path', 'int8_caveat', 'gpu_compute_capabilities',
           'mxnet_features']

# MXNet build features worth naming (mx.runtime.Features has about 30)
_FEATURES = ('MKLDNN', 'OPENMP', 'BLAS_OPEN', 'BLAS_MKL', 'CUDA', 'CUDNN', 'NCCL',
             'DIST_KVSTORE', 'INT64_TENSOR_SIZE')
INT8_FLAGS = ('avx512_vnni', 'avx_vnni', 'amx_int8')


def mxnet_features():
    """{feature: enabled} for the build features in ``_FEATURES``."""
    import mxnet as mx
    features = mx.runtime.Features()
    return {name: features.is_enabled(name) for name in _FEATURES if name in features}


def int8_caveat(cpu=None):
    """Why int8 changes a model's answers on this CPU (one line), or None where it keeps
    them (the CPU has int8 dot-product instructions: AVX512_VNNI, AVX_VNNI, AMX-INT8).

    Without them oneDNN multiplies u8 x s8 with ``vpmaddubsw``, which sums each pair of
    products in 16 bits and saturates (255 * 127 * 2 > 32767); MXNet 1.9's quantized Dense
    takes all 8 bits of its weights, so it cannot keep the 7-bit range that avoids this.
    The figures are in docs/cpus.md.
    """
    cpu = cpu or cpu_info()
    if any(cpu.has(f) for f in INT8_FLAGS):
        return None
    return ('without VNNI, int8 products saturate in 16 bits here: labels differ from '
            'float32 on about 3% of real texts (docs/cpus.md)')


def fastest_path(cpu=None, bf16=None):
    """``(dtype, why)``: the inference path ``--fast`` takes on this CPU.

    A path is picked only where it keeps float32's answers (at least 99% of labels equal on
    real texts): int8 where the CPU has int8 dot-product instructions (AVX512_VNNI,
    AVX_VNNI, AMX-INT8), then bfloat16 where it is native, else float32. Without VNNI int8
    runs, a little faster than float32, but changes answers (:func:`int8_caveat`).
    """
    cpu = cpu or cpu_info()
    supported, _ = bf16_support() if bf16 is None else (bf16, '')
    vnni = [f for f in INT8_FLAGS if cpu.has(f)]
    if vnni:
        return 'int8', f'int8 dot products in hardware ({", ".join(vnni)})'
    if supported:
        return 'bfloat16', 'native bfloat16 and no int8 dot-product instructions'
    return 'float32', ('no native bfloat16, and int8 without VNNI changes answers '
                       '(16-bit saturation)')


def report():
    """The environment as a dict (JSON-serialisable)."""
    import mxnet as mx
    import numpy as np
    cpu = cpu_info()
    bf16, why_not = bf16_support()
    try:
        import gluonnlp
        gluonnlp_version = gluonnlp.__version__
    except ImportError:
        gluonnlp_version = None
    fast, why = fastest_path(cpu, bf16)
    return {
        'gluonbert': __version__,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'mxnet': mx.__version__,
        'numpy': np.__version__,
        'gluonnlp': gluonnlp_version,
        'cpu': {'model': cpu.model, 'features': cpu.features(),
                'physical_cores': physical_cores(), 'openmp_threads': default_num_threads()},
        'mxnet_features': mxnet_features(),
        'gpus': {'visible_to_mxnet': mx.context.num_gpus(),
                 'compute_capabilities': gpu_compute_capabilities()},
        'fused_operators': ops.status(),
        'inference_paths': {'float32': 'yes',
                            'bfloat16': 'yes' if bf16 else f'no: {why_not}',
                            'int8': ('yes (VNNI)' if int8_caveat(cpu) is None else
                                     f'runs, not picked by --fast: {int8_caveat(cpu)}')},
        'fast': {'dtype': fast, 'why': why},
        'environment': {name: os.environ[name] for name in (
            'OMP_NUM_THREADS', 'GLUONBERT_FUSED_OPS', 'GLUONBERT_DISABLE_BF16',
            'GLUONBERT_CACHE_DIR', 'GLUONBERT_OFFLINE', 'MXNET_HOME', 'CUDA_VISIBLE_DEVICES')
            if name in os.environ},
        'executable': sys.executable,
    }


def format_report(info=None):
    """The report as the lines users paste into a bug report."""
    info = info or report()
    cpu, gpus = info['cpu'], info['gpus']
    features = ', '.join(f'{k}={"on" if v else "off"}' for k, v in info['mxnet_features'].items())
    lines = [
        f"gluonbert {info['gluonbert']}, mxnet {info['mxnet']}, numpy {info['numpy']}, "
        f"gluonnlp {info['gluonnlp'] or 'not installed'}, Python {info['python']}",
        f"platform: {info['platform']}",
        f"CPU: {cpu['model']}; features: {', '.join(cpu['features']) or 'none reported'}; "
        f"{cpu['physical_cores']} physical cores, {cpu['openmp_threads']} OpenMP threads",
        f"MXNet build: {features}",
        f"GPUs: {gpus['visible_to_mxnet']} visible to MXNet"
        + (f"; compute capability {', '.join(gpus['compute_capabilities'])} (nvidia-smi)"
           if gpus['compute_capabilities'] else ''),
        f"fused CPU operators: {info['fused_operators']}",
        'inference paths: ' + '; '.join(f'{k} {v}' for k, v in info['inference_paths'].items()),
        f"--fast picks: {info['fast']['dtype']} ({info['fast']['why']})",
    ]
    if info['environment']:
        lines.append('environment: ' + ', '.join(f'{k}={v}' for k, v in
                                                 info['environment'].items()))
    return '\n'.join(lines)
