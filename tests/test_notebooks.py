"""The companion notebooks: committed clean, built on gluonbert, and run top to bottom.

Each notebook is executed in smoke mode (``GLUONBERT_NOTEBOOK_SMOKE=1``: tiny runs, seconds)
with nbclient on a ``python3`` kernel of this interpreter, from the notebook's own folder as
Jupyter would. A notebook passes when no cell raises; its own closing ``assert`` cells check
the numbers it claims.
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


@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(path, monkeypatch):
    # The kernel inherits this environment: tiny runs, one OpenMP thread unless set,
    # and this checkout's gluonbert first on the path.
    monkeypatch.setenv('GLUONBERT_NOTEBOOK_SMOKE', '1')
    monkeypatch.setenv('OMP_NUM_THREADS', os.environ.get('OMP_NUM_THREADS', '1'))
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    nb = _read(path)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                     resources={'metadata': {'path': str(path.parent)}})
    start = time.time()
    client.execute()        # raises CellExecutionError, with the cell and traceback, on error
    seconds = time.time() - start
    errors = [out for cell in _code_cells(nb) for out in cell.outputs
              if out.output_type == 'error']
    assert not errors, errors
    print(f'{path.name}: {seconds:.1f} s in smoke mode')
