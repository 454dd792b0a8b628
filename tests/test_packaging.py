"""Import-time guards (missing MXNet, unsupported Python, thread defaults) and the
installed console scripts."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, env=None, cpus=None):
    """``code`` in a fresh interpreter; ``cpus``: the only CPUs it may run on."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    full_env.pop('OMP_NUM_THREADS', None)
    full_env.update(env or {})
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=full_env, timeout=120, preexec_fn=pin)


def test_missing_mxnet_says_which_extra_to_install():
    result = _run("import sys; sys.modules['mxnet'] = None\n"
                  "try:\n    import gluonbert\nexcept ImportError as e:\n    print('ERR', e)")
    assert "ERR gluonbert needs MXNet" in result.stdout
    assert "gluonbert[cpu]" in result.stdout and "cu117" in result.stdout


def test_python_312_is_refused_with_supported_versions():
    result = _run("import sys, collections\n"
                  "V = collections.namedtuple('V', 'major minor micro releaselevel serial')\n"
                  "sys.version_info = V(3, 12, 0, 'final', 0)\n"
                  "try:\n    import gluonbert\nexcept ImportError as e:\n    print('ERR', e)")
    assert 'ERR gluonbert supports Python 3.8 to 3.11' in result.stdout


def _cores_in_proc_cpuinfo(cpus):
    """Distinct ("physical id", "core id") pairs of /proc/cpuinfo among ``cpus``: the
    physical cores they sit on, counted without gluonbert's code (which reads sysfs)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            blocks = f.read().strip().split('\n\n')
    except OSError:
        pytest.skip('no /proc/cpuinfo to count physical cores from')
    cores = set()
    for block in blocks:
        fields = dict(line.split(':', 1) for line in block.splitlines() if ':' in line)
        fields = {key.strip(): value.strip() for key, value in fields.items()}
        if 'core id' not in fields:
            pytest.skip('/proc/cpuinfo names no "core id" here')
        if int(fields['processor']) in cpus:
            cores.add((fields.get('physical id', '0'), fields['core id']))
    return len(cores)


@pytest.mark.skipif(not hasattr(os, 'sched_getaffinity'), reason='CPU affinity is Linux only')
def test_thread_default_is_physical_cores_before_mxnet_import():
    code = ("import gluonbert, os\nfrom gluonbert._env import physical_cores\n"
            "print(os.environ['OMP_NUM_THREADS'], physical_cores())")
    allowed = os.sched_getaffinity(0)
    for cpus in (allowed, {min(allowed)}):  # all this process may use, and one CPU only
        result = _run(code, cpus=cpus)
        assert result.returncode == 0, result.stderr
        expected = _cores_in_proc_cpuinfo(cpus)
        assert result.stdout.split() == [str(expected)] * 2, (sorted(cpus), result.stdout)


def test_user_thread_setting_wins():
    result = _run("import gluonbert, os\nprint(os.environ['OMP_NUM_THREADS'])",
                  env={'OMP_NUM_THREADS': '1'})
    assert result.stdout.strip() == '1'


CONSOLE_SCRIPTS = ('gluonbert-finetune', 'gluonbert-predict', 'gluonbert-pretrain',
                   'gluonbert-pretrain-data', 'gluonbert-export', 'gluonbert-evaluate',
                   'gluonbert-launch',
                   'gluonbert-ops', 'gluonbert-info', 'gluonbert-serve')


def _declared_console_scripts():
    import configparser
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, 'setup.cfg'), encoding='utf-8')
    lines = config['options.entry_points']['console_scripts'].strip().splitlines()
    return dict((part.strip() for part in line.split('=')) for line in lines)


def _installed_console_scripts():
    from importlib import metadata
    found = metadata.entry_points()
    found = found.select(group='console_scripts') if hasattr(found, 'select') else \
        found.get('console_scripts', [])  # Python 3.8, 3.9
    return {e.name: e.value for e in found if e.name.startswith('gluonbert-')}


def test_console_scripts_are_the_cli_modules_and_installed_as_declared():
    declared = _declared_console_scripts()
    assert sorted(declared) == sorted(CONSOLE_SCRIPTS)
    assert all(target.startswith('gluonbert.cli.') for target in declared.values()), declared
    # stale metadata (setup.cfg changed, package not reinstalled) would start old modules
    assert _installed_console_scripts() == declared, 'run: pip install --no-deps -e .'


@pytest.mark.parametrize('name', CONSOLE_SCRIPTS)
def test_console_script_help(name, capsys):
    """Each entry point imports and prints its --help (exit 0) under its own name."""
    import importlib
    module, function = _declared_console_scripts()[name].split(':')
    entry = getattr(importlib.import_module(module), function)
    with pytest.raises(SystemExit) as done:
        entry(['--help'])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f'usage: {name} ')


def test_the_library_never_imports_the_commands():
    """Importing gluonbert and its library modules leaves gluonbert.cli unimported."""
    result = _run('import sys, gluonbert, gluonbert.export, gluonbert.fast, gluonbert.ops\n'
                  'print(sorted(m for m in sys.modules if m.startswith("gluonbert.cli")))')
    assert result.stdout.strip() == '[]', result.stderr
