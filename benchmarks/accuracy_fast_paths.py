"""Test accuracy of a fine-tuned classifier through each inference fast path.

Loads a model saved by ``gluonbert-finetune`` and reports its accuracy on the bundled test
reviews (or ``--data``) as trained, and after ``gluonbert.fast.prepare`` in float32,
bfloat16 and int8 (calibrated as ``gluonbert-predict --quantize int8`` does: on the bundled
training reviews):

    .venv/bin/gluonbert-finetune --output-dir runs/finetune
    .venv/bin/python benchmarks/accuracy_fast_paths.py --model-dir runs/finetune/model
"""
import argparse

import gluonbert
import mxnet as mx

from gluonbert import fast
from gluonbert.hardware import bf16_support, cpu_info
from gluonbert.data import BERTTransform, load_dataset, make_dataloader
from gluonbert.train import evaluate_accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--model-dir', required=True)
    parser.add_argument('--data', default='sample', help="'sample' (bundled) or a dataset path")
    parser.add_argument('--max-len', type=int, default=128)
    args = parser.parse_args(argv)
    net, vocab, tokenizer = gluonbert.load_pretrained(args.model_dir)
    test = make_dataloader(load_dataset(args.data, 'test'),
                           BERTTransform(tokenizer, vocab, max_len=args.max_len),
                           batch_size=32, shuffle=False)
    net.hybridize(static_alloc=True)
    bf16, why_not = bf16_support()
    print(f'CPU: {cpu_info().describe()}\n')
    print('| model | test accuracy |\n|---|---:|')
    print(f'| as trained | {evaluate_accuracy(net, test, mx.cpu()):.4f} |')
    calib = fast.calibration_batches(net, vocab, tokenizer, max_len=args.max_len)
    for dtype in fast.DTYPES:
        if dtype == 'bfloat16' and not bf16:
            print(f'| fast.prepare bfloat16 | skipped: {why_not} |')
            continue
        model = fast.prepare(net, dtype, calib_batches=calib if dtype == 'int8' else None)
        print(f'| fast.prepare {dtype} | {evaluate_accuracy(model, test, mx.cpu()):.4f} |')


if __name__ == '__main__':
    main()
