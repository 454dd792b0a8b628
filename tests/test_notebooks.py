"""The companion notebooks: committed clean, built on gluonbert, and run top to bottom.

Each notebook is executed in smoke mode (``GLUONBERT_NOTEBOOK_SMOKE=1``: tiny runs, seconds)
with nbclient on a ``python3`` kernel of this interpreter, from the notebook's own folder as
Jupyter would. A notebook passes when no cell raises; its own closing ``assert`` cells check
the numbers it claims. The notebooks named in ``GLUONBERT_NOTEBOOKS_FULL`` (comma-separated
number prefixes, e.g. ``02,03``; CI sets that) run in full mode instead, so their claims are
checked at the size the reader runs (about 2.5 minutes each on a 2-core Zen 5).
"""
import os
import pathlib
import re
import time

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))
# A notebook should stay a lesson, not a place where model code lives.
MAX_NOTEBOOK_BYTES = 100_000


def test_all_five_notebooks_are_here():
    assert [p.name[:3] for p in NOTEBOOKS] == ['01_', '02_', '03_', '04_', '05_']


def _read(path):
    return nbformat.read(str(path), as_version=4)


def _code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == 'code']


def _library_names():
    import gluonbert
    return {name for name in dir(gluonbert) if not name.startswith('_')}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = _read(path)
    nbformat.validate(nb)
    for index, cell in enumerate(_code_cells(nb)):
        assert cell.outputs == [], f'{path.name}: code cell {index} has outputs; strip them'
        assert cell.execution_count is None, \
            f'{path.name}: code cell {index} has execution_count {cell.execution_count}'
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES, f'{path.name} is {path.stat().st_size} bytes'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_structure(path):
    """Size chosen first, gluonbert imported, no library blocks redefined, asserts at the end."""
    cells = _code_cells(_read(path))
    assert cells, f'{path.name} has no code'
    assert 'GLUONBERT_NOTEBOOK_SMOKE' in cells[0].source, \
        f'{path.name}: the first code cell must choose the run size from GLUONBERT_NOTEBOOK_SMOKE'
    source = '\n'.join(cell.source for cell in cells)
    assert re.search(r'^\s*(import gluonbert|from gluonbert\b)', source, re.M), \
        f'{path.name} does not import gluonbert'
    defined = set(re.findall(r'^\s*class\s+(\w+)', source, re.M))
    clash = defined & _library_names()
    assert not clash, f'{path.name} redefines gluonbert names {sorted(clash)}; import them instead'
    assert re.search(r'^\s*assert\b', cells[-1].source, re.M), \
        f'{path.name}: the last code cell should assert the numbers the notebook claims'


# What each notebook takes from d2l (Dive into Deep Learning's package, the `notebooks` extra).
D2L_USES = {'02': ('d2l.plot(', 'd2l.Animator(', 'd2l.Timer('),
            '03': ('d2l.plot(', 'd2l.Animator(', 'd2l.Timer('),
            '05': ('d2l.BERTModel(', 'gluonbert.EncoderBlock(', '.as_nd_ndarray()')}


@pytest.mark.parametrize('prefix', sorted(D2L_USES))
def test_notebook_uses_d2l(prefix):
    path, = [p for p in NOTEBOOKS if p.name.startswith(prefix)]
    source = '\n'.join(cell.source for cell in _code_cells(_read(path)))
    assert re.search(r'^from d2l import mxnet as d2l\b', source, re.M), \
        f'{path.name} should import d2l the book\'s way: from d2l import mxnet as d2l'
    missing = [use for use in D2L_USES[prefix] if use not in source]
    assert not missing, f'{path.name} no longer uses {missing}'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_numpy_mode_is_switched_back(path):
    """d2l needs MXNet's numpy mode, gluonbert the classic one: every set_np() is undone."""
    source = '\n'.join(cell.source for cell in _code_cells(_read(path)))
    switches = re.findall(r'npx\.(set_np|reset_np)\(\)', source)
    assert switches == ['set_np', 'reset_np'] * (len(switches) // 2), \
        f'{path.name}: numpy mode switched {switches}; pair each npx.set_np() with npx.reset_np()'


def _full_mode(path):
    wanted = os.environ.get('GLUONBERT_NOTEBOOKS_FULL', '')
    return path.name[:2] in {w.strip() for w in wanted.split(',') if w.strip()}


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    # The kernel inherits this environment: tiny runs (unless full mode is asked for), one
    # OpenMP thread unless set, and this checkout's gluonbert first on the path.
    full = _full_mode(path)
    monkeypatch.setenv('GLUONBERT_NOTEBOOK_SMOKE', '0' if full else '1')
    if not full:
        monkeypatch.setenv('OMP_NUM_THREADS', os.environ.get('OMP_NUM_THREADS', '1'))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    nb = _read(path)
    client = nbclient.NotebookClient(nb, timeout=1800 if full else 600, kernel_name='python3',
                                     resources={'metadata': {'path': str(path.parent)}})
    start = time.time()
    client.execute()        # raises CellExecutionError, with the cell and traceback, on error
    seconds = time.time() - start
    errors = [out for cell in _code_cells(nb) for out in cell.outputs
              if out.output_type == 'error']
    assert not errors, errors
    print(f'{path.name}: {seconds:.1f} s in {"full" if full else "smoke"} mode')
    if full:  # the last cell's closing line: the claims it checked
        last = [out for out in _code_cells(nb)[-1].outputs if out.get('name') == 'stdout']
        assert last and 'all checks passed' in last[-1]['text'], last
