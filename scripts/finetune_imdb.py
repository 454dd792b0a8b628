"""Fine-tune BERT for IMDB sentiment: the GluonNLP tutorial's flow, on gluonbert.

    python scripts/finetune_imdb.py --gpus 0                       # bert_12_768_12 on IMDB
    python scripts/finetune_imdb.py --model minilm --dataset sample  # offline, on CPU

The steps are the tutorial's: load pretrained BERT, add a classifier, transform and batch
the reviews, ``train_loop``, then ``predict_sentiment``. ``gluonbert-finetune`` does the
same with checkpoints, metrics and every option.
"""
import argparse
import sys

import gluonbert  # first: it sets the OpenMP thread count MXNet reads at import
import mxnet as mx
from mxnet import gluon
from gluonbert.data import BERTTransform, DataError, load_dataset, make_dataloader
from gluonbert.pretrained import PretrainedError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='bert_12_768_12', help='zoo name, HF dir or minilm')
    parser.add_argument('--dataset', default='imdb', help='imdb, sample or an aclImdb dir')
    parser.add_argument('--max-len', type=int, default=128)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--lr', type=float, default=5e-5)
    parser.add_argument('--limit', type=int, default=None, help='use the first N examples')
    parser.add_argument('--gpus', default='', help='comma-separated GPU ids; empty: CPU')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ctx = [mx.gpu(int(i)) for i in args.gpus.split(',')] if args.gpus else [mx.cpu()]

    # 1. Pretrained BERT and its WordPiece vocabulary/tokenizer.
    bert, vocabulary, tokenizer = gluonbert.load_pretrained(args.model, ctx=ctx)

    # 2. A classifier on the pooled [CLS] output; only its new Dense layer is initialised.
    net = gluonbert.BERTClassifier(bert, num_classes=2, dropout=0.1)
    net.classifier.initialize(ctx=ctx)
    net.hybridize(static_alloc=True)

    # 3. Reviews -> [CLS] tokens [SEP], segment ids, valid_length; length-bucketed batches.
    train_set, test_set = load_dataset(args.dataset, 'train'), load_dataset(args.dataset, 'test')
    if args.limit:
        train_set = train_set.subset(range(min(args.limit, len(train_set))))
        test_set = test_set.subset(range(min(args.limit, len(test_set))))
    transform = BERTTransform(tokenizer, vocabulary, max_len=args.max_len)
    train_data = make_dataloader(train_set, transform, batch_size=args.batch_size,
                                 pad_id=vocabulary.pad_id)
    test_data = make_dataloader(test_set, transform, batch_size=args.batch_size, shuffle=False,
                                pad_id=vocabulary.pad_id)

    # 4. The tutorial's call: train_loop(net, train_data, test_data, num_epoch, lr, ctx, loss).
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    history = gluonbert.train_loop(net, train_data, test_data, args.epochs, args.lr, ctx, loss)
    print(f"test accuracy after {len(history)} epochs: {history[-1]['test_accuracy']:.4f}")

    # 5. Predict.
    prediction = gluonbert.predict_sentiment(net, ctx[0], vocabulary, tokenizer,
                                             'this movie is so great')
    print(f'this movie is so great -> {prediction.label} ({prediction.probability:.3f})')
    return history


if __name__ == '__main__':
    try:
        main()
    except (DataError, PretrainedError) as err:
        sys.exit(f'finetune_imdb: {err}')
