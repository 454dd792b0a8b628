"""The native-bfloat16 check and the refusal every bf16 entry point gives without it.

The refusal is forced on every machine (GLUONBERT_DISABLE_BF16=1, or an AVX2-only CPU put
in place of this one's), so it is tested on CPUs that do have bfloat16 too.
"""
import os
import subprocess
import sys

import mxnet as mx
import pytest

import gluonbert
from gluonbert import errors, fast, hardware
from gluonbert.cli import export_main, finetune_main, predict_main
from gluonbert.train import train_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# /proc/cpuinfo of the AVX2-only AMD EPYC on which the bf16 crash was reported (abridged)
AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi1 avx2 bmi2 sha_ni
"""
ZEN5 = """model name\t: AMD EPYC 9B45 128-Core Processor
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512dq avx512_bf16 avx512_vnni avx_vnni
"""
AVX2_REASON = ('this CPU (AMD EPYC 7B13 64-Core Processor (AVX2, FMA)) has no native bfloat16 '
               '(neither AVX512_BF16 nor AMX-BF16)')


@pytest.fixture
def avx2_only(monkeypatch):
    """This process believes it runs on the AVX2-only EPYC."""
    model, flags = hardware._parse_cpuinfo(AVX2_ONLY)  # pylint: disable=protected-access
    monkeypatch.setattr(hardware, 'cpu_info', lambda: hardware.CPUInfo(model, frozenset(flags)))
    monkeypatch.delenv(hardware.DISABLE_BF16_ENV, raising=False)


def tiny_classifier():
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(gluonbert.BERTConfig.from_preset('tiny')))
    net.initialize()
    return net


def test_cpuinfo_parsing_names_the_features():
    model, flags = hardware._parse_cpuinfo(ZEN5)  # pylint: disable=protected-access
    zen5 = hardware.CPUInfo(model, frozenset(flags))
    assert zen5.features() == ['AVX2', 'FMA', 'AVX-512F', 'AVX512_BF16', 'AVX512_VNNI',
                               'AVX_VNNI']
    model, flags = hardware._parse_cpuinfo(AVX2_ONLY)  # pylint: disable=protected-access
    epyc = hardware.CPUInfo(model, frozenset(flags))
    assert epyc.describe() == 'AMD EPYC 7B13 64-Core Processor (AVX2, FMA)'
    assert not epyc.has('avx512f') and epyc.has('avx2')


def test_this_machine_answer_agrees_with_its_flags():
    cpu = hardware.cpu_info()
    supported, reason = hardware.bf16_support()
    if os.environ.get(hardware.DISABLE_BF16_ENV, '') not in ('', '0'):
        assert not supported
    elif not (cpu.has('avx512_bf16') or cpu.has('amx_bf16')):
        assert not supported and 'has no native bfloat16' in reason
    else:  # the flags promise it: the oneDNN probe decides
        probe = hardware._onednn_bf16_probe()  # pylint: disable=protected-access
        assert supported == (probe is None) and reason == (probe and f'{probe} on this CPU '
                                                                    f'({cpu.model})' or '')


def test_avx2_only_cpu_has_no_bf16(avx2_only):
    assert hardware.bf16_support() == (False, AVX2_REASON)
    assert not hardware.has_native_bf16()


def test_disable_variable_forces_absence(monkeypatch):
    monkeypatch.setenv(hardware.DISABLE_BF16_ENV, '1')
    assert hardware.bf16_support() == (False, 'bfloat16 is turned off by '
                                              'GLUONBERT_DISABLE_BF16=1')


def test_a_failing_onednn_probe_means_absent(monkeypatch):
    """Flags that promise bf16 are not enough: oneDNN must run a bf16 product."""
    model, flags = hardware._parse_cpuinfo(ZEN5)  # pylint: disable=protected-access
    monkeypatch.setattr(hardware, 'cpu_info', lambda: hardware.CPUInfo(model, frozenset(flags)))
    monkeypatch.delenv(hardware.DISABLE_BF16_ENV, raising=False)

    def no_kernel(*args, **kwargs):
        raise mx.base.MXNetError('could not create a primitive descriptor iterator\nmore')
    monkeypatch.setattr(mx.nd, 'FullyConnected', no_kernel)
    hardware._onednn_bf16_probe.cache_clear()  # pylint: disable=protected-access
    try:
        supported, reason = hardware.bf16_support()
    finally:
        hardware._onednn_bf16_probe.cache_clear()  # pylint: disable=protected-access
    assert not supported
    assert reason == ('oneDNN could not run a bfloat16 matrix product (could not create a '
                      'primitive descriptor iterator) on this CPU (AMD EPYC 9B45 128-Core '
                      'Processor)')


@pytest.mark.parametrize('entry', ['to_bfloat16', 'prepare', 'init_amp', 'train_loop'])
def test_every_library_entry_point_refuses_without_bf16(avx2_only, entry):
    net = tiny_classifier()
    calls = {
        'to_bfloat16': lambda: fast.to_bfloat16(net),
        'prepare': lambda: fast.prepare(net, 'bfloat16', ctx=mx.cpu()),
        'init_amp': fast.init_amp_bfloat16,
        'train_loop': lambda: train_loop(net, [], None, 1, 1e-3, mx.cpu(), dtype='bfloat16',
                                         progress=False),
    }
    with pytest.raises(errors.UnsupportedHardwareError) as caught:
        calls[entry]()
    assert isinstance(caught.value, RuntimeError)  # what a Python caller would catch
    assert AVX2_REASON in str(caught.value)
    assert str(caught.value).endswith('use float32 (--dtype float32)' if entry in (
        'init_amp', 'train_loop') else 'use float32, or the dtype '
                                       'gluonbert.sysinfo.fastest_path() names')


def test_cli_refusals_are_one_line_with_exit_2(avx2_only, tmp_path, capsys):
    """Each command refuses before it loads anything (the model directory need not exist)."""
    missing = str(tmp_path / 'no-model')
    cases = [
        (predict_main, ['--model-dir', missing, '--dtype', 'bfloat16', 'a text'],
         'gluonbert-predict',
         'use --dtype float32, or --fast (the fastest path that keeps the answers here)'),
        (export_main, ['--model-dir', missing, '--output', str(tmp_path / 'x'), '--dtype',
                       'bfloat16'],
         'gluonbert-export',
         'use --dtype float32, or --fast (the fastest dtype that keeps the answers here)'),
        (finetune_main, ['--model', 'tiny', '--dtype', 'bfloat16', '--output-dir',
                         str(tmp_path / 'run'), '--no-progress'],
         'gluonbert-finetune', 'use --dtype float32'),
    ]
    for main, argv, prog, instead in cases:
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err == (f'{prog}: error: --dtype bfloat16 needs native bfloat16, but '
                                f'{AVX2_REASON}; {instead}\n')
        assert captured.out == ''
    assert not (tmp_path / 'run').exists()


def test_predict_console_script_refuses_bf16_in_a_real_process(tmp_path):
    """The installed command, with absence forced through the same check."""
    script = os.path.join(os.path.dirname(sys.executable), 'gluonbert-predict')
    command = [script] if os.path.exists(script) else [
        sys.executable, '-c', 'import sys; from gluonbert.cli import predict_entry; '
                              'predict_entry(sys.argv[1:])']
    env = dict(os.environ, GLUONBERT_DISABLE_BF16='1')
    result = subprocess.run([*command, '--model-dir', str(tmp_path), '--dtype', 'bfloat16',
                             'a gorgeous film'], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ''
    assert result.stderr == ('gluonbert-predict: error: --dtype bfloat16 needs native bfloat16, '
                             'but bfloat16 is turned off by GLUONBERT_DISABLE_BF16=1; use '
                             '--dtype float32, or --fast (the fastest path that keeps the '
                             'answers here)\n')
