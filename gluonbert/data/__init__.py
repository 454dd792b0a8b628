"""Data: text classification (readers, the BERT transform, length-bucketed batching) and
pre-training (corpora, BERT's packing and masking, shards, streaming).

A classification batch is ``(input_ids, valid_length, segments, label)``:

- ``input_ids``: ``(B, L)`` WordPiece ids, padded with the vocabulary's pad id;
- ``valid_length``: ``(B,)`` real tokens per example ([CLS] and [SEP] included);
- ``segments``: ``(B, L)`` 0 for [CLS], sentence A and its [SEP] (and for padding), 1 for B;
- ``label``: ``(B,)`` class ids.

Modules: :mod:`.readers` (CSV/TSV, JSON lines, Parquet), :mod:`.datasets` (the bundled
reviews, IMDB, aclImdb, :func:`load_dataset`), :mod:`.transform` (:class:`BERTTransform`,
:func:`truncate_pair`) and :mod:`.batching` (:func:`pad_ids`, samplers,
:func:`make_dataloader`).

Pre-training data: :mod:`.corpus` (streamed documents), :mod:`.pretraining` (BERT's
packing and masking, :class:`PretrainingData` in memory), :mod:`.shards` (the shard format),
:mod:`.prepare` (:func:`prepare_shards`) and :mod:`.stream`
(:class:`ShardedPretrainingData`). Everything public is importable from ``gluonbert.data``.
"""
from ..errors import DataError
from .batching import (BucketSampler, batchify_fn, make_dataloader, pad_ids, padding_waste,
                       shard_indices)
from .datasets import (IMDB_SHA1, SAMPLE_DIR, load_dataset, load_imdb, load_sample_reviews,
                       read_aclimdb)
from .readers import (BINARY_NAMES, DATA_SUFFIXES, PARQUET_INSTALL, TextClassificationDataset,
                      check_data_file, read_csv, read_jsonl, read_parquet, read_table)
from .transform import BERTTransform, ClassificationTransform, truncate_pair
from .corpus import expand_inputs, iter_documents, read_corpus, split_sentences
from .pretraining import IS_NEXT, NOT_NEXT, Masker, PretrainingData, pack_documents
from .shards import read_manifest
from .prepare import prepare_shards
from .stream import ShardedPretrainingData

__all__ = ['DataError', 'TextClassificationDataset', 'read_csv', 'read_jsonl', 'read_parquet',
           'read_table', 'check_data_file', 'read_aclimdb', 'load_imdb', 'load_sample_reviews',
           'load_dataset', 'BERTTransform', 'ClassificationTransform', 'batchify_fn',
           'BucketSampler', 'padding_waste', 'make_dataloader', 'SAMPLE_DIR',
           'pad_ids', 'truncate_pair', 'shard_indices', 'BINARY_NAMES', 'DATA_SUFFIXES',
           'PARQUET_INSTALL', 'IMDB_SHA1', 'expand_inputs', 'iter_documents', 'read_corpus',
           'split_sentences', 'IS_NEXT', 'NOT_NEXT', 'Masker', 'PretrainingData',
           'pack_documents', 'read_manifest', 'prepare_shards', 'ShardedPretrainingData']
