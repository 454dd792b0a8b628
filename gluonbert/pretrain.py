"""Pre-training BERT from raw text: masked-LM + next-sentence data and ``pretrain_loop``.

Batches are ``(input_ids, segments, valid_length, masked_positions, masked_ids,
masked_weights, nsp_labels)`` with shapes ``(B, L), (B, L), (B,), (B, M), (B, M), (B, M),
(B,)``. ``masked_weights`` is 1 for real predictions and 0 for padding slots, so padded
predictions do not count. NSP label 0 means "B follows A", 1 means "B is random".
"""
import csv
import json
import math
import os
import re
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from .data import DataError
from .distributed import ServerSchedule, get_group, shard
from .errors import CheckpointError
from .train import (LinearWarmupSchedule, atomic_write, load_trainer_states, make_trainer,
                    save_trainer_states, _write_text)
from .train import _assign_parameters, _checked_parameters, _read_json, _rewrite_metrics

__all__ = ['read_corpus', 'split_sentences', 'PretrainingData', 'pretrain_loop',
           'evaluate_pretraining', 'IS_NEXT', 'NOT_NEXT']

IS_NEXT, NOT_NEXT = 0, 1
_SENTENCE_END = re.compile(r'(?<=[.!?])["\')\]]*\s+(?=["\'(\[]?[A-Z0-9])')
_HTML_BREAK = re.compile(r'<br\s*/?>', re.IGNORECASE)


# ---------------------------------------------------------------------------- corpus
def split_sentences(text):
    """Split a document into sentences (punctuation followed by a capital; HTML breaks)."""
    sentences = []
    for block in _HTML_BREAK.split(text):
        sentences.extend(s.strip() for s in _SENTENCE_END.split(block.strip()) if s.strip())
    return sentences


def read_corpus(path, *, text_column='text'):
    """Documents as lists of sentences.

    - ``.txt``: one sentence per line, a blank line between documents;
    - ``.csv``/``.tsv``/``.jsonl``: one document per row in ``text_column``, split into
      sentences with :func:`split_sentences`.

    Raises DataError (naming the file) for an empty corpus or fewer than 2 documents, which
    next-sentence prediction needs for its negatives.
    """
    if not os.path.isfile(path):
        raise DataError(f'corpus file not found: {path}')
    suffix = os.path.splitext(path)[1].lower()
    documents = []
    try:
        if suffix in ('.csv', '.tsv', '.jsonl', '.json'):
            documents = [split_sentences(text) for text in _read_column(path, suffix,
                                                                        text_column)]
        else:
            current = []
            with open(path, encoding='utf-8') as f:
                for line in f:
                    line = line.strip()
                    if line:
                        current.append(line)
                    elif current:
                        documents.append(current)
                        current = []
            if current:
                documents.append(current)
    except UnicodeDecodeError as err:
        raise DataError(f'{path}: not valid UTF-8 at byte {err.start}') from err
    documents = [doc for doc in documents if doc]
    if not documents:
        raise DataError(f'{path}: the corpus is empty')
    if len(documents) < 2:
        raise DataError(f'{path}: the corpus has 1 document; next-sentence prediction needs '
                        f'at least 2 (separate documents with a blank line)')
    return documents


def _read_column(path, suffix, column):
    if suffix in ('.jsonl', '.json'):
        with open(path, encoding='utf-8') as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f'{path}:{number}: invalid JSON ({err.msg})') from err
                if column not in row:
                    raise DataError(f'{path}:{number}: no {column!r} field; fields: '
                                    f'{", ".join(row)}')
                yield str(row[column])
        return
    with open(path, encoding='utf-8', newline='') as f:
        reader = csv.DictReader(f, delimiter='\t' if suffix == '.tsv' else ',')
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise DataError(f'{path}:1: no {column!r} column; columns: '
                            f'{", ".join(reader.fieldnames or [])}')
        for row in reader:
            yield row[column]


# ------------------------------------------------------------------------------ data
class PretrainingData:
    """Masked-LM + next-sentence examples from tokenized documents, deterministic per seed.

    Parameters
    ----------
    documents : list of list of str
        Documents as sentences (raw text).
    tokenizer, vocab
        WordPiece tokenizer and vocabulary.
    max_len : int
        Pair length with [CLS] and 2 [SEP]; the longer side is trimmed to fit.
    max_predictions : int
        Most masked positions per sequence (M).
    mask_prob : float, default 0.15
        Fraction of eligible tokens (not [CLS]/[SEP]/[PAD]) chosen as targets; of those 80%
        become [MASK], 10% a random token and 10% stay unchanged.
    seed : int
    """

    def __init__(self, documents, tokenizer, vocab, *, max_len=128, max_predictions=20,
                 mask_prob=0.15, seed=0):
        if max_len < 5:
            raise ValueError(f'max_len must be at least 5, got {max_len}')
        if max_predictions < 1:
            raise ValueError(f'max_predictions must be >= 1, got {max_predictions}')
        self.vocab = vocab
        self.max_len = max_len
        self.max_predictions = max_predictions
        self.mask_prob = mask_prob
        self.seed = seed
        self.documents = [[ids for ids in (vocab[tokenizer(s)] for s in doc) if ids]
                          for doc in documents]
        self.documents = [doc for doc in self.documents if doc]
        if len(self.documents) < 2:
            raise DataError('pre-training needs at least 2 non-empty documents')
        special = {vocab.cls_id, vocab.sep_id, vocab.pad_id, vocab.mask_id, vocab.unk_id}
        self._random_ids = np.array([i for i in range(len(vocab)) if i not in special])
        # one example per sentence that has a successor in its document, plus one per document
        self._anchors = [(d, s) for d, doc in enumerate(self.documents)
                         for s in range(max(1, len(doc) - 1))]

    def __len__(self):
        return len(self._anchors)

    def examples(self, epoch=0):
        """All examples of one epoch, in a shuffled order; masking differs per epoch."""
        rng = np.random.RandomState((self.seed * 1_000_003 + epoch) % (2 ** 32))
        order = rng.permutation(len(self._anchors))
        return [self._example(self._anchors[i], rng) for i in order]

    def _example(self, anchor, rng):
        doc_index, sent_index = anchor
        doc = self.documents[doc_index]
        first = list(doc[sent_index])
        if len(doc) > sent_index + 1 and rng.rand() < 0.5:
            second, label = list(doc[sent_index + 1]), IS_NEXT
        else:
            other = rng.randint(len(self.documents) - 1)
            other += other >= doc_index  # any document but this one
            other_doc = self.documents[other]
            second, label = list(other_doc[rng.randint(len(other_doc))]), NOT_NEXT
        while len(first) + len(second) > self.max_len - 3:  # trim the longer side
            (first if len(first) >= len(second) else second).pop()
        vocab = self.vocab
        ids = [vocab.cls_id] + first + [vocab.sep_id] + second + [vocab.sep_id]
        segments = [0] * (len(first) + 2) + [1] * (len(second) + 1)
        eligible = [i for i, t in enumerate(ids) if t not in (vocab.cls_id, vocab.sep_id,
                                                              vocab.pad_id)]
        count = min(self.max_predictions,
                    max(1, int(round(len(eligible) * self.mask_prob))))
        positions = sorted(rng.choice(eligible, size=min(count, len(eligible)), replace=False))
        targets = [ids[p] for p in positions]
        for p in positions:
            draw = rng.rand()
            if draw < 0.8:
                ids[p] = vocab.mask_id
            elif draw < 0.9:
                ids[p] = int(self._random_ids[rng.randint(len(self._random_ids))])
        return ids, segments, positions, targets, label

    def batches(self, batch_size, epoch=0, ctx=None, *, num_shards=1, shard_index=0,
                even_shards=True):
        """Padded NDArray batches of one epoch (the last one may be smaller).

        ``num_shards``/``shard_index``: only this worker's shard of the epoch's examples
        (every ``num_shards``-th one, see :func:`gluonbert.distributed.shard_indices`);
        ``even_shards`` drops the remainder so every shard has the same size.
        """
        examples = shard(self.examples(epoch), num_shards, shard_index, even=even_shards)
        return [self.batchify(examples[i:i + batch_size], ctx)
                for i in range(0, len(examples), batch_size)]

    def batchify(self, examples, ctx=None):
        ctx = ctx or mx.cpu()
        size, longest = len(examples), max(len(e[0]) for e in examples)
        m = self.max_predictions
        input_ids = np.full((size, longest), self.vocab.pad_id, dtype=np.float32)
        segments = np.zeros((size, longest), dtype=np.float32)  # padding is segment 0
        valid_length = np.zeros(size, dtype=np.float32)
        positions = np.zeros((size, m), dtype=np.float32)
        targets = np.zeros((size, m), dtype=np.float32)
        weights = np.zeros((size, m), dtype=np.float32)
        labels = np.zeros(size, dtype=np.float32)
        for row, (ids, segs, pos, tgt, label) in enumerate(examples):
            input_ids[row, :len(ids)] = ids
            segments[row, :len(segs)] = segs
            valid_length[row] = len(ids)
            positions[row, :len(pos)] = pos
            targets[row, :len(tgt)] = tgt
            weights[row, :len(pos)] = 1
            labels[row] = label
        return tuple(mx.nd.array(a, ctx=ctx) for a in
                     (input_ids, segments, valid_length, positions, targets, weights, labels))


# ------------------------------------------------------------------------------ loop
def _losses(model, batch, loss_fn):
    input_ids, segments, valid_length, positions, targets, weights, labels = batch
    _, _, mlm_logits, nsp_logits = model(input_ids, segments, valid_length, positions)
    vocab_size = mlm_logits.shape[-1]
    mlm_per_slot = loss_fn(mlm_logits.reshape((-1, vocab_size)), targets.reshape((-1,)),
                           weights.reshape((-1, 1)))
    num_targets = weights.sum()
    mlm_loss = mlm_per_slot.sum() / num_targets
    nsp_loss = loss_fn(nsp_logits, labels).mean()
    mlm_hits = ((mlm_logits.argmax(axis=-1) == targets) * weights).sum()
    nsp_hits = (nsp_logits.argmax(axis=-1) == labels).sum()
    return mlm_loss, nsp_loss, (mlm_per_slot.sum(), num_targets, mlm_hits, nsp_hits,
                                nsp_loss * labels.shape[0], labels.shape[0])


def _summarise(sums):
    mlm_sum, mlm_count, mlm_hits, nsp_hits, nsp_sum, nsp_count = sums
    mlm_loss = mlm_sum / max(mlm_count, 1)
    return {'mlm_loss': mlm_loss, 'mlm_accuracy': mlm_hits / max(mlm_count, 1),
            'mlm_perplexity': math.exp(min(mlm_loss, 50.0)),
            'nsp_loss': nsp_sum / max(nsp_count, 1), 'nsp_accuracy': nsp_hits / max(nsp_count, 1)}


def _read(stats):
    return [float(s.asscalar()) if isinstance(s, mx.nd.NDArray) else float(s) for s in stats]


def evaluate_pretraining(model, batches, *, group=None):
    """MLM loss/accuracy/perplexity and NSP loss/accuracy over ``batches``.

    With a distributed ``group``, ``batches`` are this worker's shard and the sums are taken
    over every worker (all of them must call it).
    """
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    totals = np.zeros(6)
    for batch in batches:
        _, _, stats = _losses(model, batch, loss_fn)
        totals += _read(stats)
    if group is not None and group.is_distributed:
        totals = group.allreduce(totals)
    return _summarise(totals)


def pretrain_loop(model, data, *, steps, batch_size=32, lr=1e-4, ctx=None, eval_data=None,
                  warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0, accumulate=1,
                  optimizer='adamw', seed=0, checkpoint_dir=None, checkpoint_interval=None,
                  resume=False, metrics_path=None, log_interval=50, progress=True,
                  kvstore='device'):
    """Pre-train a :class:`BERTForPretraining` with MLM + NSP for ``steps`` updates.

    Parameters
    ----------
    model : BERTForPretraining
    data : PretrainingData
        Re-masked every epoch (dynamic masking); epochs repeat until ``steps`` is reached.
    eval_data : PretrainingData, optional
        Held-out examples, evaluated every ``log_interval`` steps and at the end.
    checkpoint_dir : str, optional
        Atomic checkpoints every ``checkpoint_interval`` steps (default: every log interval)
        and at the end; ``resume=True`` continues from the last one exactly.
    kvstore : {'device', 'local', 'dist_sync', 'dist_device_sync', 'dist_async', 'horovod'}
        Distributed kinds (see :mod:`gluonbert.distributed`): each worker takes every
        N-th example of each epoch (equal shards), ``batch_size`` is per worker, the
        gradients (each worker's mean loss) are averaged over the workers, the logged and
        evaluated metrics are over all workers, and only rank 0 writes files. Every worker
        passes the same ``data``, ``eval_data`` and ``seed``.

    Returns
    -------
    list of dict
        Logged records with ``step``, the training metrics since the last record
        (``mlm_loss``, ``mlm_accuracy``, ``mlm_perplexity``, ``nsp_loss``, ``nsp_accuracy``),
        ``sequences_per_second`` and, with eval_data, ``eval_*`` metrics.
    """
    from tqdm.auto import tqdm
    ctx = ctx or mx.cpu()
    if steps < 1:
        raise ValueError(f'steps must be >= 1, got {steps}')
    if resume and not checkpoint_dir:
        raise ValueError('resume=True needs a checkpoint_dir')
    group = get_group(kvstore)
    progress = progress and group.is_root
    shards = ({'num_shards': group.num_workers, 'shard_index': group.rank}
              if group.is_distributed else {})
    schedule = LinearWarmupSchedule(lr, steps, warmup_ratio)
    trainer = make_trainer(model, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                           kvstore=group.trainer_kvstore(),
                           update_on_kvstore=group.update_on_kvstore,
                           lr_scheduler=ServerSchedule(LinearWarmupSchedule(
                               lr, steps * group.num_workers, warmup_ratio))
                           if group.update_on_kvstore else None)
    params = [p for p in model.collect_params().values() if p.grad_req != 'null']
    if accumulate > 1:
        for param in params:
            param.grad_req = 'add'
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    checkpoint_interval = checkpoint_interval or log_interval
    eval_batches = eval_data.batches(batch_size, epoch=0, ctx=ctx, even_shards=False,
                                     **shards) if eval_data else None

    step, records = 0, []
    if resume:
        state_path = os.path.join(checkpoint_dir, 'last.json')
        if os.path.exists(state_path):  # checked as fine-tuning checkpoints are: no pickles
            state = _read_json(state_path, 'checkpoint state')
            if not isinstance(state.get('step'), int) or not isinstance(state.get('records'),
                                                                        list):
                raise CheckpointError(f'{state_path}: damaged checkpoint state (no step or '
                                      f'records)')
            arrays = _checked_parameters(model, os.path.join(checkpoint_dir, 'last.params'))
            if not group.update_on_kvstore:
                load_trainer_states(trainer, os.path.join(checkpoint_dir, 'last.states'))
            _assign_parameters(model, arrays, [ctx])
            step, records = state['step'], state['records']
        group.check_same(step, 'the step to resume from')
    if group.is_distributed:
        if group.update_on_kvstore:  # the servers' schedule continues where it was
            trainer._optimizer.begin_num_update = trainer._optimizer.num_update = \
                step * group.num_workers  # pylint: disable=protected-access
        group.sync_parameters(trainer, model.collect_params().values())

    if metrics_path and group.is_root:  # one line per logged step: none repeated on resume
        _rewrite_metrics(metrics_path, records)
    # each worker's shard has len(data) // num_workers examples
    batches_per_epoch = math.ceil(len(data) // group.num_workers / batch_size)
    window = np.zeros(6)
    window_start, window_sequences = time.perf_counter(), 0
    bar = tqdm(total=steps, initial=step, desc='pre-training', unit='step',
               disable=not progress, dynamic_ncols=True)
    consumed = step * accumulate  # batches consumed so far, which fixes the data position
    epoch, epoch_batches = None, None
    while step < steps:
        # dropout randomness is a function of the step (and rank), so a resumed run replays it
        mx.random.seed((seed * 1_000_003 + step + 104_729 * group.rank) % (2 ** 31))
        for _ in range(accumulate):
            if epoch != consumed // batches_per_epoch:
                epoch = consumed // batches_per_epoch
                epoch_batches = data.batches(batch_size, epoch=epoch, ctx=ctx, **shards)
            batch = epoch_batches[consumed % batches_per_epoch]
            with autograd.record():
                mlm_loss, nsp_loss, stats = _losses(model, batch, loss_fn)
                loss = (mlm_loss + nsp_loss) / accumulate
                if group.gradient_divisor > 1:  # summed over the workers: their mean
                    loss = loss / group.gradient_divisor
            loss.backward()
            window += _read(stats)
            window_sequences += batch[0].shape[0]
            consumed += 1
        step += 1
        group.step(trainer, params, [ctx], schedule(step), max_grad_norm)
        if accumulate > 1:
            for param in params:
                param.zero_grad()
        bar.update(1)
        if step % log_interval == 0 or step == steps:
            if group.is_distributed:  # over every worker's shard
                *window, window_sequences = group.allreduce([*window, window_sequences])
            record = {'step': step, **_summarise(window),
                      'sequences_per_second': window_sequences /
                      (time.perf_counter() - window_start), 'lr': schedule(step)}
            if eval_batches is not None:
                record.update({f'eval_{k}': v for k, v in
                               evaluate_pretraining(model, eval_batches, group=group).items()})
            records.append(record)
            bar.set_postfix(mlm=f"{record['mlm_loss']:.3f}", nsp=f"{record['nsp_accuracy']:.2f}")
            if metrics_path and group.is_root:
                os.makedirs(os.path.dirname(os.path.abspath(metrics_path)), exist_ok=True)
                with open(metrics_path, 'a', encoding='utf-8') as f:
                    f.write(json.dumps(record) + '\n')
            window = np.zeros(6)
            window_start, window_sequences = time.perf_counter(), 0
        if checkpoint_dir and group.is_root and (step % checkpoint_interval == 0 or
                                                 step == steps):
            atomic_write(os.path.join(checkpoint_dir, 'last.params'), model.save_parameters)
            if not group.update_on_kvstore:  # dist_async: the states live on the servers
                atomic_write(os.path.join(checkpoint_dir, 'last.states'),
                             lambda tmp: save_trainer_states(trainer, tmp))
            _write_text(os.path.join(checkpoint_dir, 'last.json'),
                        json.dumps({'step': step, 'records': records}))
    bar.close()
    group.release(params)
    return records
