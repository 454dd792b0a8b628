"""The switches .ci/run's lanes rely on, and a check that the lane the suite runs in is in
effect.

The AVX2 lane runs the numerics-sensitive tests as an AVX2-only CPU sees them, on any
machine: oneDNN capped to AVX2 (``DNNL_MAX_CPU_ISA=AVX2``), gluonbert's fused operators
compiled for Haswell (``GLUONBERT_OPS_MARCH=haswell``) and gluonbert's feature detection
told that the CPU has AVX2 and FMA only (``GLUONBERT_CPU_FEATURES=avx2,fma``). The lane
without the fused operators sets ``GLUONBERT_FUSED_OPS=0``. ``GLUONBERT_LANE`` names the
lane, so that :func:`test_the_lane_is_in_effect` knows what to check.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from gluonbert import hardware, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Instructions only AVX-512 has: its registers (zmm, the k masks), broadcasts and ternlog.
AVX512_INSTRUCTION = re.compile(r'%zmm\d|%k[1-7]\b|\{1to\d+\}|vpternlog')


def _python(code, **env):
    environment = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=environment, timeout=300, cwd=ROOT)


ONEDNN_ISA = '''
import mxnet as mx
x = mx.nd.ones((4, 16))
mx.nd.FullyConnected(x, mx.nd.ones((8, 16)), num_hidden=8, no_bias=True).wait_to_read()
'''


def onednn_isa(**env):
    """The ISA oneDNN reports in its first verbose lines, in a fresh process."""
    done = _python(ONEDNN_ISA, DNNL_VERBOSE='1', **env)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'dnnl_verbose,info,cpu,isa:(.*)', done.stdout + done.stderr)
    assert found, (done.stdout + done.stderr)[-2000:]
    return found.group(1).strip()


def test_onednn_takes_its_isa_cap():
    """MXNet 1.9.1's oneDNN (v2.4) reads DNNL_MAX_CPU_ISA: SSE4.1 is below every CPU
    gluonbert runs on, so the cap shows on any machine; AVX2 is what the lane sets."""
    assert onednn_isa(DNNL_MAX_CPU_ISA='SSE41') == 'Intel SSE4.1'
    assert onednn_isa(DNNL_MAX_CPU_ISA='AVX2') == 'Intel AVX2'


FEATURES = '''
import json
from gluonbert import hardware, sysinfo
cpu = hardware.cpu_info()
print(json.dumps({'flags': sorted(cpu.flags), 'bf16': hardware.bf16_support()[0],
                  'fast': sysinfo.fastest_path()[0], 'caveat': sysinfo.int8_caveat()}))
'''


def test_cpu_features_override_hides_flags_and_adds_none():
    with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
        _, real = hardware._parse_cpuinfo(f.read())  # noqa: SLF001  the parser under test
    done = _python(FEATURES, GLUONBERT_CPU_FEATURES='AVX2, fma,amx_bf16,avx512_vnni')
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    # the flags the machine has, of those named (case and spaces do not matter)
    assert seen['flags'] == sorted(real & {'avx2', 'fma', 'amx_bf16', 'avx512_vnni'})
    if 'amx_bf16' not in real:
        assert not seen['bf16']
    as_avx2 = json.loads(_python(FEATURES, GLUONBERT_CPU_FEATURES='avx2,fma')
                         .stdout.splitlines()[-1])
    assert as_avx2['flags'] == sorted(real & {'avx2', 'fma'})
    assert not as_avx2['bf16'] and as_avx2['fast'] == 'float32' and as_avx2['caveat']


@pytest.mark.skipif(os.environ.get('GLUONBERT_FUSED_OPS') == '0', reason='GLUONBERT_FUSED_OPS=0')
def test_fused_operators_build_for_another_cpu(tmp_path):
    """GLUONBERT_OPS_MARCH=haswell compiles a library of its own, with no AVX-512
    instruction in it, and it loads."""
    if not shutil.which('objdump'):
        pytest.fail('objdump (binutils) is needed to read the library back; apt-get install '
                    'binutils')
    code = ('from gluonbert import ops\npath = ops.build(quiet=True)\n'
            'print(ops.load(), path)\nprint(ops.status())')
    done = _python(code, GLUONBERT_OPS_MARCH='haswell', GLUONBERT_CACHE_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    loaded, path = done.stdout.splitlines()[-2].split(' ', 1)
    assert loaded == 'True' and os.path.basename(path).startswith('fused_ops-haswell-')
    assert done.stdout.splitlines()[-1].endswith('(built for -march=haswell)')
    assert _avx512_instructions(path) == []


def test_a_march_that_is_no_cpu_name_is_refused(monkeypatch):
    monkeypatch.setenv(ops.MARCH_ENV, 'native -fplugin=evil.so')
    with pytest.raises(ops.EnvironmentProblem, match='is not a CPU name'):
        ops.march()


def _avx512_instructions(path):
    listing = subprocess.run(['objdump', '-d', path], capture_output=True, text=True,
                             check=True).stdout
    return [line for line in listing.splitlines() if AVX512_INSTRUCTION.search(line)][:5]


LANE = os.environ.get('GLUONBERT_LANE')


@pytest.mark.skipif(not LANE, reason='the suite runs outside .ci/run\'s lanes (GLUONBERT_LANE '
                                     'unset); the switches are tested above')
def test_the_lane_is_in_effect():
    """What .ci/run says its lane sets is what this process sees."""
    if LANE == 'avx2':
        assert onednn_isa() == 'Intel AVX2'
        assert hardware.cpu_info().flags <= {'avx2', 'fma'}
        assert not hardware.bf16_support()[0]
        assert ops.march() == 'haswell' and ops.load(), ops.status()
        assert ops.status().endswith('(built for -march=haswell)')
        library = ops.status().split('loaded from ', 1)[1].split(' (built for')[0]
        assert _avx512_instructions(library) == []
    elif LANE == 'no-fused-ops':
        assert not ops.load() and ops.status() == 'turned off by GLUONBERT_FUSED_OPS=0'
    else:
        pytest.fail(f'unknown GLUONBERT_LANE={LANE!r} (avx2 or no-fused-ops)')
