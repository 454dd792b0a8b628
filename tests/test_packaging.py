"""Import-time guards: missing MXNet, unsupported Python, thread defaults."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, env=None):
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    full_env.pop('OMP_NUM_THREADS', None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=full_env, timeout=120)


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


def test_thread_default_is_physical_cores_before_mxnet_import():
    result = _run("import gluonbert, os\nfrom gluonbert._env import physical_cores\n"
                  "print(os.environ['OMP_NUM_THREADS'], physical_cores())")
    threads, cores = result.stdout.split()
    assert threads == cores


def test_user_thread_setting_wins():
    result = _run("import gluonbert, os\nprint(os.environ['OMP_NUM_THREADS'])",
                  env={'OMP_NUM_THREADS': '1'})
    assert result.stdout.strip() == '1'
