"""Named datasets: the bundled movie reviews, IMDB (downloaded through GluonNLP), a
Stanford ``aclImdb`` directory, or any data file :func:`~gluonbert.data.read_table` reads."""
import glob
import os

from .._io import file_sha1
from .._net import gluon_repo_url, reachable_url
from ..errors import DataError
from .readers import BINARY_NAMES, DATA_SUFFIXES, TextClassificationDataset, read_jsonl, read_table

__all__ = ['SAMPLE_DIR', 'IMDB_SHA1', 'read_aclimdb', 'load_imdb', 'load_sample_reviews',
           'load_dataset']

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'resources', 'reviews')


def _decode_error(path, err, data=None):
    line = data[:err.start].count(b'\n') + 1 if data is not None else '?'
    return DataError(f'{path}:{line}: invalid UTF-8 at byte {err.start}; the file must be '
                     f'UTF-8 encoded')


def _read_text(path):
    if not os.path.isfile(path):
        raise DataError(f'no such file: {path}')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        raise _decode_error(path, err, data) from err


def read_aclimdb(root, split='train'):
    """Read the Stanford ``aclImdb`` tree: ``root/<split>/{pos,neg}/*.txt``."""
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    texts, ids = [], []
    for label, folder in enumerate(('neg', 'pos')):
        directory = os.path.join(root, split, folder)
        if not os.path.isdir(directory):
            raise DataError(f'{directory} is missing: expected the aclImdb layout '
                            f'{split}/pos and {split}/neg with one review per .txt file')
        for path in sorted(glob.glob(os.path.join(directory, '*.txt'))):
            texts.append(_read_text(path).strip())
            ids.append(label)
    return TextClassificationDataset(texts, ids, list(BINARY_NAMES),
                                     source=os.path.join(root, split))


# gluonnlp.data.IMDB's files and their sha1, as its downloader checks them.
IMDB_SHA1 = {'train': '516a0ba06bca4e32ee11da2e129f4f871dff85dc',
             'test': '7d59bd8899841afdc1c75242815260467495b64a'}


def load_imdb(split='train', root=None):
    """IMDB through ``gluonnlp.data.IMDB`` (rating >= 5 is positive); needs the download or a
    cached copy. Fails within seconds, with instructions, when neither is available."""
    import gluonnlp
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = root or os.path.join(gluonnlp.base.get_home_dir(), 'datasets', 'imdb')
    file_name, sha1 = f'{split}.json', IMDB_SHA1[split]
    path = os.path.join(os.path.expanduser(root), file_name)
    if not os.path.exists(path) or file_sha1(path) != sha1:
        repo = gluon_repo_url()
        if not reachable_url(repo):
            raise DataError(f'IMDB is not cached ({path} is missing or damaged) and its '
                            f'download repository {repo} is not reachable. Put {file_name} in '
                            f'{root}, or use --dataset /path/to/aclImdb or --train/--test '
                            f'CSV files')
    dataset = gluonnlp.data.IMDB(split, root=root)
    texts = [text for text, _ in dataset]
    ids = [1 if score >= 5 else 0 for _, score in dataset]
    return TextClassificationDataset(texts, ids, list(BINARY_NAMES), source=f'IMDB {split}')


def load_sample_reviews(split='train'):
    """The bundled movie reviews (balanced positive/negative), ``'train'`` or ``'test'``."""
    if split not in ('train', 'test'):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return read_jsonl(os.path.join(SAMPLE_DIR, f'{split}.jsonl'))


def load_dataset(name_or_path, split='train', *, text_column=None, label_column=None,
                 labels=None, text_pair_column=None):
    """``'sample'`` (bundled), ``'imdb'`` (download), an ``aclImdb`` directory, or a data
    file (:func:`read_table`; ``split`` is then unused).

    The keyword arguments go to :func:`read_table` and apply to data files only.
    """
    options = {'text_column': text_column, 'label_column': label_column, 'labels': labels,
               'text_pair_column': text_pair_column}
    options = {k: v for k, v in options.items() if v is not None}
    if os.path.splitext(os.fspath(name_or_path))[1].lower() in DATA_SUFFIXES:
        return read_table(name_or_path, **options)
    if options:
        raise DataError(f'{", ".join(options)} apply to data files (.csv, .tsv, .jsonl, '
                        f'.parquet), not to {name_or_path!r}')
    if name_or_path == 'sample':
        return load_sample_reviews(split)
    if name_or_path == 'imdb':
        return load_imdb(split)
    if os.path.isdir(name_or_path):
        return read_aclimdb(name_or_path, split)
    raise DataError(f"unknown dataset {name_or_path!r}: use 'sample', 'imdb', an aclImdb "
                    f"directory or a .csv, .tsv, .jsonl or .parquet file")
