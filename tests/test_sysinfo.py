"""The environment report, the path --fast picks per CPU, and the clear GPU refusal."""
import json

import mxnet as mx
import pytest

from gluonbert import hardware, sysinfo
from gluonbert.errors import UnsupportedHardwareError


def cpu(*flags, model='Test CPU'):
    return hardware.CPUInfo(model, frozenset(flags))


@pytest.mark.parametrize('flags, bf16, dtype', [
    (('avx2', 'avx512f', 'avx512_bf16', 'amx_int8', 'avx512_vnni'), True, 'int8'),  # Xeon AMX
    (('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni'), True, 'int8'),             # Zen 5
    (('avx2', 'avx512f', 'avx512_bf16'), True, 'bfloat16'),
    (('avx2', 'fma'), False, 'float32'),                   # AVX2 EPYC: int8 changes labels
    (('sse4_2',), False, 'float32'),
])
def test_fast_picks_the_fastest_path_that_keeps_the_answers(flags, bf16, dtype):
    assert sysinfo.fastest_path(cpu(*flags), bf16)[0] == dtype
    # the report says of int8 what --fast does: picked exactly where it has no caveat
    caveat = sysinfo.int8_caveat(cpu(*flags))
    assert (caveat is None) == ('avx512_vnni' in flags or 'amx_int8' in flags)
    if caveat:
        assert 'saturate' in caveat and dtype != 'int8'


def test_report_names_the_machine_and_is_json():
    info = sysinfo.report()
    json.dumps(info)  # pasteable as JSON too
    text = sysinfo.format_report(info)
    assert text.splitlines()[2].startswith(f"CPU: {hardware.cpu_info().model}; features: ")
    assert f"--fast picks: {info['fast']['dtype']} (" in text
    assert info['mxnet_features']['MKLDNN'] is True  # the CPU wheel is built with oneDNN
    assert info['inference_paths']['bfloat16'] == (
        'yes' if hardware.has_native_bf16() else f'no: {hardware.bf16_support()[1]}')


def test_a_cpu_context_passes_without_a_gpu_probe(monkeypatch):
    """A CPU context returns before any kernel is tried: the probe, here one that would
    report missing kernels, is not called for it (and is for a GPU context)."""
    probed = []

    def probe(ctx):
        probed.append(ctx)
        return 'CUDA: no kernel image is available for execution on the device'

    monkeypatch.setattr(hardware, '_gpu_probe', probe)
    monkeypatch.setattr(hardware, 'gpu_compute_capabilities', lambda: ['9.0'])
    assert hardware.require_gpu_kernels(mx.cpu()) is None
    assert hardware.require_gpu_kernels(mx.cpu(1), capability='9.0') is None
    assert probed == []
    with pytest.raises(UnsupportedHardwareError):
        hardware.require_gpu_kernels(mx.gpu(0))
    assert probed == [mx.gpu(0)]


def test_missing_gpu_kernels_are_one_clear_line(monkeypatch):
    """What PyPI's mxnet-cu112/cu117 do on an H100/H200 (sm_90), with the probe mocked."""
    monkeypatch.setattr(hardware, '_gpu_probe', lambda ctx: (
        'CUDA: no kernel image is available for execution on the device'))
    with pytest.raises(UnsupportedHardwareError) as caught:
        hardware.require_gpu_kernels(mx.gpu(0), capability='9.0')
    assert str(caught.value) == (
        "this MXNet build has no CUDA kernels for GPU 0 (compute capability 9.0): PyPI's "
        "mxnet-cu112/cu117 wheels stop before compute capability 9.0 (H100/H200); build MXNet "
        "for this GPU or run on CPU (see the README section \"GPUs\")")
    monkeypatch.setattr(hardware, '_gpu_probe', lambda ctx: 'CUDA: out of memory')
    monkeypatch.setattr(hardware, 'gpu_compute_capabilities', lambda: ['8.0', '8.0'])
    with pytest.raises(UnsupportedHardwareError) as caught:
        hardware.require_gpu_kernels(mx.gpu(1))
    assert str(caught.value) == ('MXNet cannot run on GPU 1 (compute capability 8.0): CUDA: '
                                 'out of memory (see the README section "GPUs")')


def test_the_probe_reports_mxnets_error_line(monkeypatch):
    """Without a GPU (a CPU build of MXNet), the real probe fails with MXNet's own line."""
    if mx.context.num_gpus() > 0:
        pytest.skip('this machine has a GPU: the probe succeeds (checked by the CLI tests)')
    problem = hardware._gpu_probe(mx.gpu(0))  # pylint: disable=protected-access
    assert problem and 'GPU' in problem.upper()


def test_info_command_prints_the_report(capsys):
    from gluonbert.cli.info import main
    assert main([]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith('gluonbert ')
    assert f'CPU: {hardware.cpu_info().model}' in text
    assert main(['--json']) == 0
    info = json.loads(capsys.readouterr().out)
    assert info['cpu']['model'] == hardware.cpu_info().model
    assert info['fast']['dtype'] == sysinfo.fastest_path()[0]
