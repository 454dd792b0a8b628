"""The portable exports of a fine-tuned classifier, measured: how far each one's
probabilities are from gluonbert's float32 model, and how many texts per second
onnxruntime (float32, int8) runs against gluonbert's ``--fast`` path, on the same texts.

Exports the model with ``gluonbert-export --format onnx --dtype int8`` and ``--format hf``
into a temporary directory, then runs ``--limit`` texts (the bundled reviews, train file
first) in batches of ``--batch-size``, sorted by length as ``gluonbert-predict`` does, one
timed pass each after one untimed warm-up batch::

    .venv/bin/gluonbert-finetune --output-dir runs/finetune
    .venv/bin/python benchmarks/bench_exports.py --model-dir runs/finetune/model

The Hugging Face export is compared where transformers (with torch) is installed.
"""
import argparse
import os
import tempfile
import time

import gluonbert  # noqa: F401  (first: it sets MXNet's OpenMP thread count)
import mxnet as mx
import numpy as np

from gluonbert import fast
from gluonbert.cli.export import export_main
from gluonbert.hardware import cpu_info
from gluonbert.hf_export import encode_inputs, softmax, transformers_available
from gluonbert.model_dir import load_classifier
from gluonbert.data import load_sample_reviews
from gluonbert.sysinfo import fastest_path

def review_texts(limit):
    """The first ``limit`` bundled reviews, the train file first."""
    texts = [text for split in ('train', 'test') for text in load_sample_reviews(split).texts]
    return texts[:limit]


def batches(net, vocab, tokenizer, texts, batch_size):
    """Length-sorted batches of Hugging Face style int64 inputs."""
    lengths = [len(tokenizer(t)) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [encode_inputs(net, vocab, tokenizer, [texts[i] for i in order[s:s + batch_size]])
            for s in range(0, len(order), batch_size)]


def timed(run, inputs):
    """(probabilities in batch order, texts per second) of one pass after a warm-up."""
    run(inputs[0])
    start = time.perf_counter()
    outputs = [run(batch) for batch in inputs]
    seconds = time.perf_counter() - start
    return np.concatenate([softmax(o) for o in outputs]), sum(len(o) for o in outputs) / seconds


def gluonbert_runner(model):
    def run(batch):
        words = mx.nd.array(batch['input_ids'], dtype='float32')
        segments = mx.nd.array(batch['token_type_ids'], dtype='float32')
        valid = mx.nd.array(batch['attention_mask'].sum(1), dtype='float32')
        return model(words, segments, valid).astype('float32').asnumpy()
    return run


def onnx_runner(path):
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return lambda batch: session.run(['logits'], batch)[0]


def hf_runner(directory):
    import torch
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()

    def run(batch):
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--model-dir', required=True)
    parser.add_argument('--limit', type=int, default=256)
    parser.add_argument('--batch-size', type=int, default=32)
    args = parser.parse_args(argv)
    print(f'CPU: {cpu_info().describe()}')
    net, vocab, tokenizer = load_classifier(args.model_dir)
    texts = review_texts(args.limit)
    inputs = batches(net, vocab, tokenizer, texts, args.batch_size)
    print(f'{len(texts)} texts, batch {args.batch_size}, '
          f'{sum(b["input_ids"].shape[1] for b in inputs) / len(inputs):.0f} tokens per row '
          f'on average (padded)')
    reference, _ = timed(gluonbert_runner(net), inputs)
    choice, why = fastest_path()
    calib = (fast.calibration_batches(net, vocab, tokenizer) if choice == 'int8' else None)
    paths = {'gluonbert float32 (hybridized)': gluonbert_runner(net)}
    net.hybridize(static_alloc=True)
    paths[f'gluonbert --fast ({choice}: {why})'] = gluonbert_runner(
        fast.prepare(net, choice, calib_batches=calib))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir, hf_dir = os.path.join(tmp, 'onnx'), os.path.join(tmp, 'hf')
        assert export_main(['--model-dir', args.model_dir, '--output', onnx_dir,
                            '--format', 'onnx', '--dtype', 'int8']) == 0
        assert export_main(['--model-dir', args.model_dir, '--output', hf_dir,
                            '--format', 'hf']) == 0
        paths['onnxruntime float32'] = onnx_runner(os.path.join(onnx_dir, 'model.onnx'))
        paths['onnxruntime int8'] = onnx_runner(os.path.join(onnx_dir, 'model_int8.onnx'))
        if transformers_available():
            paths['transformers (torch) float32'] = hf_runner(hf_dir)
        print(f'{"path":<58} {"texts/s":>8} {"max |dp|":>10} {"same label":>10}')
        for name, run in paths.items():
            probabilities, speed = timed(run, inputs)
            diff = float(np.abs(probabilities - reference).max())
            agree = float((probabilities.argmax(1) == reference.argmax(1)).mean())
            print(f'{name:<58} {speed:8.1f} {diff:10.2g} {agree:10.1%}')


if __name__ == '__main__':
    main()
