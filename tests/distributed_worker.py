"""One worker of the distributed tests (run by gluonbert-launch or horovodrun).

    python tests/distributed_worker.py OUT_DIR --kvstore dist_sync

Fine-tunes a tiny classifier (no dropout) on synthetic text with ``train_loop``, then
pre-trains a tiny model a few steps with ``pretrain_loop`` (in memory, then streamed from
shards, noting the shards each worker opens), and saves its parameters and
histories as ``OUT_DIR/rank{R}.npz`` / ``OUT_DIR/rank{R}.json``. Workers other than rank 0
initialise differently on purpose: training must start from rank 0's values.
``--crash-index I`` makes launch index I exit with status 3 right away.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import numpy as np  # noqa: E402

PER_WORKER_BATCH = 8
EPOCHS = 2
PRETRAIN_STEPS = 4


def corpus(n=48, seed=0):
    """Texts of 'good' words (label 1) or 'bad' words (label 0), with varied lengths."""
    rng = np.random.RandomState(seed)
    good, bad = [f'g{i}' for i in range(20)], [f'b{i}' for i in range(20)]
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.randint(2))
        own, other = (good, bad) if label else (bad, good)
        words = [own[rng.randint(20)] if rng.rand() < 0.75 else other[rng.randint(20)]
                 for _ in range(rng.randint(3, 13))]
        texts.append(' '.join(words))
        labels.append(label)
    return texts, labels, good + bad


def tiny_classifier(vocab_size, seed):
    import gluonbert
    import mxnet as mx
    mx.random.seed(seed)
    config = gluonbert.BERTConfig.from_preset('tiny', vocab_size=vocab_size, dropout=0.0,
                                              attention_dropout=0.0)
    net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=2, dropout=0.0)
    net.initialize()
    return net


def finetune(kvstore, batch_size, out_dir=None):
    """(parameters, history) of the fine-tuning run, on this worker's shard."""
    import mxnet as mx
    from gluonbert.data import BERTTransform, TextClassificationDataset, make_dataloader
    from gluonbert.distributed import get_group
    from gluonbert.train import train_loop
    from stand_ins import WordVocab, whitespace_tokenizer
    group = get_group(kvstore)
    texts, labels, words = corpus()
    vocab = WordVocab(words)
    transform = BERTTransform(whitespace_tokenizer, vocab, max_len=16)
    train_set = TextClassificationDataset(texts, labels, ['negative', 'positive'])
    test_texts, test_labels, _ = corpus(n=21, seed=1)
    test_set = TextClassificationDataset(test_texts, test_labels, ['negative', 'positive'])
    shards = dict(num_shards=group.num_workers, shard_index=group.rank)
    train = make_dataloader(train_set, transform, batch_size=batch_size, shuffle=False,
                            bucket=False, pad_id=vocab.pad_id, progress=False, **shards)
    test = make_dataloader(test_set, transform, batch_size=batch_size, shuffle=False,
                           pad_id=vocab.pad_id, progress=False, even_shards=False, **shards)
    net = tiny_classifier(len(vocab), seed=group.rank)  # rank 0's init must win
    files = {}
    if out_dir:
        files = dict(metrics_path=os.path.join(out_dir, 'metrics.jsonl'),
                     checkpoint_dir=os.path.join(out_dir, 'checkpoints'))
    history = train_loop(net, train, test, EPOCHS, 2e-3, mx.cpu(), kvstore=kvstore,
                         progress=False, seed=3, **files)
    params = {k: v.data().asnumpy() for k, v in net._collect_params_with_prefix().items()}
    return params, list(history)


def pretraining_data():
    from gluonbert.pretrain import PretrainingData
    from stand_ins import WordVocab, whitespace_tokenizer
    sentences = [' '.join(f's{k}t{j}' for j in range(5)) for k in range(12)]
    docs = [[sentences[(start + i) % 12] for i in range(4)] for start in range(12)]
    vocab = WordVocab([f's{k}t{j}' for k in range(12) for j in range(5)])
    data = PretrainingData(docs, whitespace_tokenizer, vocab, max_len=16, max_predictions=3,
                           seed=0)
    held_out = PretrainingData(docs[:5], whitespace_tokenizer, vocab, max_len=16,
                               max_predictions=3, seed=1)
    return data, held_out, vocab


def tiny_pretraining_model(vocab_size, seed):
    import gluonbert
    import mxnet as mx
    mx.random.seed(seed)
    config = gluonbert.BERTConfig.from_preset('tiny', vocab_size=vocab_size, dropout=0.0,
                                              attention_dropout=0.0)
    model = gluonbert.BERTForPretraining(config)
    model.initialize()
    return model


def pretrain(kvstore, batch_size, out_dir=None):
    """(parameters, records) of the pre-training run; with ``out_dir``, a checkpoint after
    every update (between the records too: the workers' metric sums are then summed into
    rank 0's checkpoint)."""
    from gluonbert.distributed import get_group
    from gluonbert.pretrain import pretrain_loop
    group = get_group(kvstore)
    data, held_out, vocab = pretraining_data()
    model = tiny_pretraining_model(len(vocab), seed=group.rank)
    files = {}
    if out_dir:
        files = dict(checkpoint_dir=os.path.join(out_dir, 'pretrain-checkpoints'),
                     checkpoint_every=1)
    records = pretrain_loop(model, data, steps=PRETRAIN_STEPS, batch_size=batch_size, lr=1e-3,
                            eval_data=held_out, log_interval=2, progress=False,
                            kvstore=kvstore, **files)
    params = {k: v.data().asnumpy() for k, v in model._collect_params_with_prefix().items()}
    return params, records


def stream_pretrain(kvstore, batch_size, out_dir):
    """(parameters, shard names opened, all train shard names) of a pre-training run
    streamed from shards; each worker prepares its own copy (the same bytes) and must read
    only its share of them."""
    from gluonbert.data import ShardedPretrainingData, prepare_shards
    from gluonbert.data import stream
    from gluonbert.distributed import get_group
    from gluonbert.pretrain import pretrain_loop
    from stand_ins import whitespace_tokenizer
    group = get_group(kvstore)
    sentences = [' '.join(f's{k}t{j}' for j in range(5)) for k in range(12)]
    _, _, vocab = pretraining_data()
    corpus = os.path.join(out_dir, f'corpus-{group.rank}.txt')
    with open(corpus, 'w', encoding='utf-8') as f:
        f.write('\n\n'.join('\n'.join(sentences[(start + i) % 12] for i in range(4))
                            for start in range(36)) + '\n')
    directory = os.path.join(out_dir, f'shards-{group.rank}')
    manifest = prepare_shards(corpus, directory, whitespace_tokenizer, vocab, max_len=16,
                              examples_per_shard=6, documents_per_chunk=6, heldout_every=0,
                              progress=False)
    opened = []

    class Recorded(stream.Shard):
        def __init__(self, directory, record, vocab_size, **options):
            opened.append(record['name'])
            super().__init__(directory, record, vocab_size, **options)
    stream.Shard = Recorded
    data = ShardedPretrainingData(directory, vocab, max_predictions=3, shuffle_buffer=5)
    model = tiny_pretraining_model(len(vocab), seed=group.rank)
    pretrain_loop(model, data, steps=2 * data.batches_per_epoch(batch_size, group.num_workers),
                  batch_size=batch_size, lr=1e-3, progress=False, kvstore=kvstore)
    params = {k: v.data().asnumpy() for k, v in model._collect_params_with_prefix().items()}
    return params, sorted(set(opened)), [r['name'] for r in manifest['shards']['train']]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('out_dir')
    parser.add_argument('--kvstore', default='dist_sync')
    parser.add_argument('--crash-index', type=int, default=None)
    args = parser.parse_args()
    if args.crash_index is not None and \
            os.environ.get('GLUONBERT_LAUNCH_INDEX') == str(args.crash_index):
        print('crashing on purpose', flush=True)
        sys.exit(3)
    from gluonbert.distributed import get_group
    group = get_group(args.kvstore)
    print(f'rank {group.rank} of {group.num_workers}', flush=True)
    params, history = finetune(args.kvstore, PER_WORKER_BATCH, args.out_dir)
    pre_params, records = pretrain(args.kvstore, PER_WORKER_BATCH, args.out_dir)
    stream_params, opened, shards = stream_pretrain(args.kvstore, PER_WORKER_BATCH // 2,
                                                    args.out_dir)
    np.savez(os.path.join(args.out_dir, f'rank{group.rank}.npz'), **params,
             **{f'pretrain/{k}': v for k, v in pre_params.items()},
             **{f'stream/{k}': v for k, v in stream_params.items()})
    with open(os.path.join(args.out_dir, f'rank{group.rank}.json'), 'w') as f:
        json.dump({'history': history, 'records': records, 'opened_shards': opened,
                   'train_shards': shards, 'num_workers': group.num_workers}, f)
    print('done', flush=True)


if __name__ == '__main__':
    main()
