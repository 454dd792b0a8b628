"""Full disks (issue 27): every write that runs out of room is one line naming the file and
the space it needs, leaves no temporary file behind, and keeps what was there before.

The disks are real. As root, a tmpfs of a few MB is mounted under tmp_path (unmounted at
teardown) and filled to a chosen point with a filler file: test ids end in ``[tmpfs]``.
Where mounting is not permitted, each scenario runs in a child process whose files may not
grow past ``RLIMIT_FSIZE`` (``ulimit -f``; SIGXFSZ ignored, so that such a write fails
with EFBIG): test ids end in ``[rlimit]``. ``GLUONBERT_FULL_DISK=rlimit`` picks the second
where the first would work. "Fill, leaving N bytes" is N bytes free on the tmpfs, or files
of at most N bytes under the limit. The scenarios fill the disk at a point of a run through
``gluonbert._io._boundary_hook`` (e.g. once a checkpoint's space was checked, to reach the
write itself), and assert themselves: in the child too.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

import mxnet as mx
import pytest

import gluonbert
import gluonbert._io as gio
from gluonbert.cli import export_main, finetune_main, pretrain_data_main
from gluonbert.cli.runner import run_command
from gluonbert.errors import StorageError

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
DISK_SIZE = 48 << 20  # a finetune's two checkpoints (12 MB each), model/ and the filler's room
PAGE = 4096


def _mount_permitted():
    """Whether a tmpfs can be mounted here (root, Linux, mount(8)); probed once."""
    if os.environ.get('GLUONBERT_FULL_DISK') == 'rlimit' or not sys.platform.startswith(
            'linux') or shutil.which('mount') is None or os.geteuid() != 0:
        return False
    probe = tempfile.mkdtemp(prefix='gluonbert-tmpfs-probe-')
    try:
        mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe],
                                 capture_output=True, check=False).returncode == 0
        if mounted:
            subprocess.run(['umount', probe], check=True)
        return mounted
    finally:
        os.rmdir(probe)


MECHANISM = 'tmpfs' if _mount_permitted() else 'rlimit'


class Disk:
    """A directory on a disk that can be filled: ``fill(leave)`` leaves ``leave`` bytes of
    room (see the module's docstring), ``unfill()`` gives the room back."""

    FILLER = 'filler'

    def __init__(self, root, mechanism):
        self.root, self.mechanism = root, mechanism

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def fill(self, leave):
        if self.mechanism == 'rlimit':
            import resource
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (leave, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            return
        grow = (gio.free_bytes(self.root) - leave) // PAGE * PAGE
        if grow > 0:
            with open(self.path(self.FILLER), 'ab') as f:
                os.posix_fallocate(f.fileno(), f.seek(0, os.SEEK_END), grow)
        assert abs(gio.free_bytes(self.root) - leave) <= PAGE

    def unfill(self):
        if self.mechanism == 'rlimit':
            import resource
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        elif os.path.exists(self.path(self.FILLER)):
            os.unlink(self.path(self.FILLER))


@pytest.fixture(params=[MECHANISM])
def disk(request, tmp_path):
    root = tmp_path / 'disk'
    root.mkdir()
    if request.param == 'rlimit':
        yield Disk(str(root), 'rlimit')
        return
    subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={DISK_SIZE}', 'tmpfs', str(root)],
                   check=True)
    try:
        yield Disk(str(root), 'tmpfs')
    finally:
        gio._boundary_hook = None
        if subprocess.run(['umount', str(root)], check=False).returncode != 0:
            subprocess.run(['umount', '-l', str(root)], check=True)  # a file still open


CHILD = '''import json, signal, sys
sys.path[:0] = [{tests!r}, {repo!r}]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past RLIMIT_FSIZE: EFBIG, not a kill
import test_full_disk as t
t.{scenario}(t.Disk(sys.argv[1], 'rlimit'), *json.loads(sys.argv[2]))
'''


def run(scenario, disk, *args):
    """``scenario(disk, *args)``: here on a tmpfs, in a child process under the limit."""
    if disk.mechanism == 'tmpfs':
        try:
            scenario(disk, *args)
        finally:
            gio._boundary_hook = None
        return
    child = subprocess.run(
        [sys.executable, '-c', CHILD.format(tests=TESTS, repo=REPO, scenario=scenario.__name__),
         disk.root, json.dumps(args)], cwd=REPO, capture_output=True, text=True, timeout=300,
        check=False, env=dict(os.environ, GLUONBERT_FULL_DISK='rlimit'))
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-6000:]
    for line in child.stdout.splitlines():  # the messages it checked (pytest -s shows them)
        if line.startswith('[rlimit] '):
            print(line)


# ------------------------------------------------------------------------- helpers
def one_line(text, prog):
    """The message of the single ``PROG: error: ...`` line ``text`` holds."""
    assert text.count('\n') == 1 and text.startswith(f'{prog}: error: '), text
    return text[len(f'{prog}: error: '):].rstrip('\n')


def check_message(message, disk, path, needed, *, refused=False, free_now=True):
    """A full-disk line: it names ``path`` first, says "no space", the bytes ``needed`` and
    what the mechanism met (the free space left: now, unless ``free_now`` is False, for a
    run that wrote on after it; or the file size limit)."""
    print(f'[{disk.mechanism}] {message}')  # what a user reads (pytest -s shows it)
    assert message.startswith(f'{path}: no space '), message
    assert '\n' not in message and gio.format_bytes(needed) in message, message
    assert ('nothing was written' in message) == refused, message
    if disk.mechanism == 'tmpfs':
        free = gio.format_bytes(gio.free_bytes(disk.root)) if free_now else r'[0-9.]+ [kMG]?B'
        assert re.search(rf'\({free} free, ', message), (message, free)
        assert message.endswith('free space or choose another directory'), message
    else:
        assert 'the file size limit is' in message and '(ulimit -f)' in message, message


def needed(disk, file_bytes, total):
    """What a line says is needed: on a full disk, the room for the whole transaction
    (e.g. a checkpoint's files); over the size limit, the file's own bytes."""
    return total if disk.mechanism == 'tmpfs' else file_bytes


PARAMS, STATES = 3991728, 7982089  # a tiny classifier's model.params and trainer.states


def leftovers(directory):
    """Temporary files and staging directories under ``directory`` (the lock files and the
    filler are not)."""
    found = []
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            if name.startswith('.') and name != '.lock' or name.endswith(('.tmp', '.link')):
                found.append(os.path.relpath(os.path.join(root, name), directory))
    return found


def digests(paths):
    return {path: hashlib.sha256(open(path, 'rb').read()).hexdigest() for path in paths}


def hook_at(point, match, action):
    """Call ``action()`` once, at the first ``boundary(point, path)`` whose path has
    ``match``."""
    done = []

    def hook(name, path):
        if name == point and match in path and not done:
            done.append(name)
            action()
    gio._boundary_hook = hook


def fill_once_plotted(disk, leave, out):
    """Fill the disk, then wait for the run's plot: it is written (in the main thread) while
    the checkpoint is (in the writer's), and waiting keeps the room running out on the
    checkpoint's file, not on the plot's."""
    disk.fill(leave)
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(out, 'history.png')) and time.monotonic() < deadline:
        time.sleep(0.05)


def fill_once_plotted_first(disk, leave, out):
    """Wait for the run's plot, then fill the disk (for a fill that leaves the plot no room
    either)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(out, 'history.png')) and time.monotonic() < deadline:
        time.sleep(0.05)
    disk.fill(leave)


def quiet(function, *args):
    """``function(*args)`` with stdout swallowed and stderr captured: ``(result, stderr)``."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        result = function(*args)
    return result, err.getvalue()


ARRAYS = 250_000  # float32 values: a 1 MB file


# ------------------------------------------------------------------------- scenarios
def writes_on_a_full_disk(disk):
    """mx.nd.save, a text file and an append through the write path, 64 kB of room."""
    disk.fill(64 << 10)
    arrays = {'weight': mx.nd.ones((ARRAYS,))}
    needed = gio.ndarray_file_bytes(arrays)
    path = disk.path('a.params')
    with pytest.raises(StorageError) as caught:
        gio.save_ndarrays(path, arrays, check=False)  # past the pre-check: the write fails
    assert caught.value.errno == (errno.ENOSPC if disk.mechanism == 'tmpfs' else errno.EFBIG)
    assert isinstance(caught.value, OSError) and caught.value.written
    assert isinstance(caught.value.__cause__, (mx.base.MXNetError, StorageError))
    check_message(str(caught.value), disk, path, needed)
    assert sorted(os.listdir(disk.root)) == ([Disk.FILLER] if disk.mechanism == 'tmpfs' else [])

    # a console command prints it as one line and exits 2
    status, err = quiet(run_command, 'prog',
                        lambda args: gio.save_ndarrays(path, arrays, check=False), None)
    assert status == 2
    check_message(one_line(err, 'prog'), disk, path, needed)

    # Python's own writes (an OSError without a file name before): named, nothing left
    text = 'x' * (1 << 20)
    with pytest.raises(StorageError) as caught:
        gio.write_text(disk.path('notes.txt'), text)
    check_message(str(caught.value), disk, disk.path('notes.txt'), len(text))
    assert not os.path.exists(disk.path('notes.txt')) and leftovers(disk.root) == []

    # an append that does not fit is cut off: the file keeps its lines, no torn one
    disk.unfill()
    log = disk.path('metrics.jsonl')
    gio.append_text(log, '{"epoch": 1}\n')
    disk.fill(64 << 10)
    with pytest.raises(StorageError) as caught:
        gio.append_text(log, text)
    check_message(str(caught.value), disk, log, len(text))
    assert open(log, encoding='utf-8').read() == '{"epoch": 1}\n'


def refused_before_writing(disk):
    """A write whose size is known and does not fit: refused, nothing created."""
    disk.fill(64 << 10)
    arrays = {'weight': mx.nd.ones((ARRAYS,))}
    path = disk.path('sub', 'a.params')
    with pytest.raises(StorageError) as caught:
        gio.save_ndarrays(path, arrays)
    assert not caught.value.written
    check_message(str(caught.value), disk, path, gio.ndarray_file_bytes(arrays), refused=True)
    assert sorted(os.listdir(disk.root)) == ([Disk.FILLER] if disk.mechanism == 'tmpfs' else [])


def finetune_args(files, out, epochs, *extra):
    train, test = files
    return ['--model', 'tiny', '--train', train, '--test', test, '--text-column', 'review',
            '--label-column', 'sentiment', '--epochs', str(epochs), '--batch-size', '8',
            '--max-len', '32', '--output-dir', out, '--no-progress', *extra]


def first_checkpoint(disk, files):
    """The disk fills once the first checkpoint's space was checked: its write fails."""
    out = disk.path('run')
    hook_at('checkpoint.staging', '.epoch-0001.', lambda: fill_once_plotted(disk, 256 << 10, out))
    status, err = quiet(finetune_main, finetune_args(files, out, 1))
    assert status == 2
    params = os.path.join(out, 'checkpoints', 'epoch-0001', 'model.params')
    check_message(one_line(err, 'gluonbert-finetune'), disk, params,
                  needed(disk, PARAMS, PARAMS + STATES))
    assert sorted(os.listdir(os.path.join(out, 'checkpoints'))) == ['.lock']
    assert not os.path.exists(os.path.join(out, 'model')) and leftovers(out) == []


def later_checkpoint(disk, files):
    """Epoch 2's checkpoint fails: epoch 1's stays current, whole, and --resume goes on."""
    out = disk.path('run')
    checkpoints = os.path.join(out, 'checkpoints')
    hook_at('checkpoint.staging', '.epoch-0002.', lambda: fill_once_plotted(disk, 256 << 10, out))
    status, err = quiet(finetune_main, finetune_args(files, out, 2))
    assert status == 2
    check_message(one_line(err, 'gluonbert-finetune'), disk,
                  os.path.join(checkpoints, 'epoch-0002', 'model.params'),
                  needed(disk, PARAMS, PARAMS + STATES))
    assert sorted(os.listdir(checkpoints)) == ['.lock', 'best.params', 'epoch-0001', 'last']
    assert open(os.path.join(checkpoints, 'last'), encoding='utf-8').read() == 'epoch-0001\n'
    assert leftovers(out) == []
    first = json.loads(open(os.path.join(out, 'metrics.jsonl'), encoding='utf-8')
                       .readline())
    disk.unfill()
    status, err = quiet(finetune_main, finetune_args(files, out, 2, '--resume'))
    assert status == 0, err
    history = json.load(open(os.path.join(out, 'metrics.json'), encoding='utf-8'))['history']
    assert len(history) == 2 and history[0] == first  # epoch 1 was resumed, not redone
    assert sorted(os.listdir(checkpoints)) == ['.lock', 'best.params', 'epoch-0002', 'last']
    assert leftovers(out) == []


def pointer_of_a_later_checkpoint(disk, files):
    """Epoch 2's checkpoint is written whole but its pointer cannot be: epoch 2's directory
    is removed again and epoch 1 stays current."""
    out = disk.path('run')
    checkpoints = os.path.join(out, 'checkpoints')
    hook_at('checkpoint.renamed', 'epoch-0002',
            lambda: fill_once_plotted_first(disk, 0, out))
    status, err = quiet(finetune_main, finetune_args(files, out, 2))
    assert status == 2
    state = os.path.getsize(os.path.join(checkpoints, 'epoch-0001', 'state.json'))
    check_message(one_line(err, 'gluonbert-finetune'), disk, os.path.join(checkpoints, 'last'),
                  needed(disk, 11, PARAMS + STATES + state + 11))
    assert sorted(os.listdir(checkpoints)) == ['.lock', 'best.params', 'epoch-0001', 'last']
    assert open(os.path.join(checkpoints, 'last'), encoding='utf-8').read() == 'epoch-0001\n'
    assert leftovers(out) == []


def model_directory_at_the_end(disk, files):
    """The disk fills after the last checkpoint: saving OUTPUT_DIR/model is refused before
    anything of it is written; the checkpoint stays."""
    out = disk.path('run')
    hook_at('checkpoint.pruned', 'checkpoints', lambda: disk.fill(1 << 20))
    status, err = quiet(finetune_main, finetune_args(files, out, 1))
    assert status == 2
    check_message(one_line(err, 'gluonbert-finetune'), disk,
                  os.path.join(out, 'model', 'model.params'), PARAMS, refused=True)
    assert not os.path.exists(os.path.join(out, 'model')) and leftovers(out) == []
    assert open(os.path.join(out, 'checkpoints', 'last'), encoding='utf-8').read() == \
        'epoch-0001\n'


def model_directory_kept(disk, model_dir):
    """Saving over a model directory on a full disk: the previous one is kept, loadable."""
    net, vocab, tokenizer = gluonbert.load_pretrained(model_dir)
    target = disk.path('model')
    gluonbert.save_pretrained(net, vocab, tokenizer, target)
    before = digests(os.path.join(target, name) for name in os.listdir(target))
    disk.fill(1 << 20)
    with pytest.raises(StorageError) as caught:
        gluonbert.save_pretrained(net, vocab, tokenizer, target)
    check_message(str(caught.value), disk, os.path.join(target, 'model.params'), PARAMS,
                  refused=True)
    assert digests(before) == before and leftovers(disk.root) == []
    gluonbert.load_pretrained(target)


def export_onto_a_full_disk(disk, model_dir):
    """gluonbert-export fills the disk mid-way: one line, the previous export as it was."""
    prefix = disk.path('exported', 'clf')
    flags = ['--model-dir', model_dir, '--output', prefix, '--dtype', 'float32']
    status, err = quiet(export_main, flags)
    assert status == 0, err
    before = digests(f'{prefix}-{suffix}' for suffix in
                     ('symbol.json', '0000.params', 'vocab.txt', 'meta.json'))
    hook_at('export.staging', '.export-', lambda: disk.fill(256 << 10))
    status, err = quiet(export_main, flags)
    assert status == 2
    message = one_line(err, 'gluonbert-export')
    sizes = [os.path.getsize(path) for path in before]  # symbol, params, vocab, meta
    check_message(message, disk, f'{prefix}-0000.params',
                  needed(disk, sizes[1], sum(sizes[:3])))
    assert digests(before) == before
    assert sorted(os.listdir(disk.path('exported'))) == sorted(os.path.basename(p)
                                                               for p in before)
    if disk.mechanism == 'rlimit':
        return  # the vocabulary is smaller than the parameters: no limit fails it alone
    # room for the graph and its parameters, not for the vocabulary written after them
    disk.unfill()
    pages = sum(-(-size // PAGE) * PAGE for size in sizes[:2])
    hook_at('export.staging', '.export-', lambda: disk.fill(pages + (64 << 10)))
    status, err = quiet(export_main, flags)
    assert status == 2
    check_message(one_line(err, 'gluonbert-export'), disk, f'{prefix}-vocab.txt',
                  sum(sizes[:3]))
    assert digests(before) == before and leftovers(disk.root) == []


def shards_onto_a_full_disk(disk, corpus):
    """gluonbert-pretrain-data writes its shards onto a full disk: one line naming the
    shard, no temporary file."""
    out = disk.path('shards')
    disk.fill(16 << 10)
    status, err = quiet(pretrain_data_main, ['--input', corpus, '--output', out,
                                             '--max-len', '32', '--no-progress'])
    assert status == 2
    message = one_line(err, 'gluonbert-pretrain-data')
    print(f'[{disk.mechanism}] {message}')
    assert message.startswith(os.path.join(out, 'train-00000.ids.npy') + ': no space'), message
    assert leftovers(disk.root) == []


def checkpoint_refused_before_writing(disk, files):
    """A disk without room for a checkpoint: refused before its staging directory exists."""
    out = disk.path('run')
    created = []
    hook_at('checkpoint.staging', '', lambda: created.append('staging'))
    disk.fill(4 << 20)  # room for what comes before, not for the 12 MB checkpoint
    status, err = quiet(finetune_main, finetune_args(files, out, 1))
    assert status == 2
    message = one_line(err, 'gluonbert-finetune')
    # the whole checkpoint's bytes; under the limit, its largest file's
    checkpoint = os.path.join(out, 'checkpoints', 'epoch-0001')
    check_message(message, disk, checkpoint if disk.mechanism == 'tmpfs' else
                  os.path.join(checkpoint, 'trainer.states'),  # over the limit: the file
                  needed(disk, STATES, PARAMS + STATES), refused=True,
                  free_now=False)  # the plot was written after the refusal
    assert created == [] and sorted(os.listdir(os.path.join(out, 'checkpoints'))) == ['.lock']
    assert leftovers(out) == []


# --------------------------------------------------------------------------- tests
@pytest.fixture(scope='module')
def files(tmp_path_factory):
    from stand_ins import NEGATIVE, POSITIVE, write_review_csv
    directory = tmp_path_factory.mktemp('data')
    rows = [(t, 'positive') for t in POSITIVE] + [(t, 'negative') for t in NEGATIVE]
    return (write_review_csv(directory / 'train.csv', rows * 2),
            write_review_csv(directory / 'test.csv', rows))


@pytest.fixture(scope='module')
def model_dir(files, tmp_path_factory):
    """A tiny fine-tuned classifier's OUTPUT_DIR/model (on the ordinary disk)."""
    out = str(tmp_path_factory.mktemp('trained') / 'run')
    status, err = quiet(finetune_main, finetune_args(files, out, 1))
    assert status == 0, err
    return os.path.join(out, 'model')


def test_writes_on_a_full_disk_are_one_line_and_leave_nothing(disk):
    run(writes_on_a_full_disk, disk)


def test_a_write_that_cannot_fit_is_refused_before_writing(disk):
    run(refused_before_writing, disk)


def test_the_first_checkpoint_on_a_full_disk(disk, files):
    run(first_checkpoint, disk, files)


def test_a_later_checkpoint_keeps_the_previous_one_resumable(disk, files):
    run(later_checkpoint, disk, files)


def test_a_later_checkpoint_whose_pointer_cannot_be_written(disk, files):
    run(pointer_of_a_later_checkpoint, disk, files)


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(disk, files):
    run(checkpoint_refused_before_writing, disk, files)


def test_saving_model_at_the_end_of_finetune(disk, files):
    run(model_directory_at_the_end, disk, files)


def test_a_previous_model_directory_is_kept(disk, model_dir):
    run(model_directory_kept, disk, model_dir)


def test_export_onto_a_full_disk_keeps_the_previous_export(disk, model_dir):
    run(export_onto_a_full_disk, disk, model_dir)


def test_pretraining_shards_onto_a_full_disk(disk, tmp_path):
    rng = random.Random(0)
    words = ['film', 'story', 'actor', 'scene', 'music', 'plot', 'light', 'night', 'house',
             'river', 'green', 'quiet', 'strange', 'found', 'walked', 'under', 'before']
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text('\n\n'.join('\n'.join(' '.join(rng.choice(words) for _ in range(12))
                                            .capitalize() + '.' for _ in range(6))
                                  for _ in range(200)) + '\n', encoding='utf-8')
    run(shards_onto_a_full_disk, disk, str(corpus))


def test_the_limit_mechanism_is_what_the_child_meets():
    """The fallback's premise: past RLIMIT_FSIZE (SIGXFSZ ignored) a write fails with EFBIG
    and MXNet's writer with 'Write incomplete', which the write path reads as such."""
    code = ('import resource, signal, sys\n'
            'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'
            'resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))\n'
            'f = open(sys.argv[1], "wb", buffering=0)\n'
            'f.write(b"x" * 4096)\n'
            'try:\n    f.write(b"y")\nexcept OSError as err:\n    print(err.errno)\n')
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, 'f')
        child = subprocess.run([sys.executable, '-c', code, path], capture_output=True,
                               text=True, timeout=60, check=True)
        assert child.stdout.strip() == str(errno.EFBIG)
        assert os.path.getsize(path) == 4096
