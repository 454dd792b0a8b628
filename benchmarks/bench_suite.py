"""gluonbert performance suite: inference, training, tokenization, padding, GEMM peak.

One run measures everything the same way, in the same conditions:

- inference sequences/s at batch 32 x 128 for bert_12_768_12 and MiniLM (6 x 384):
  gluonbert float32 / bfloat16 / int8 (:mod:`gluonbert.fast`), GluonNLP's BERTModel and,
  when available, Hugging Face transformers (PyTorch) float32 / bfloat16 autocast;
- training samples/s at batch 8 x 128 (forward, backward, AdamW update; no clipping):
  gluonbert float32 / bfloat16 (AMP), GluonNLP, Hugging Face float32 / bfloat16;
- tokenization texts/s on long reviews (the bundled reviews repeated to ~400 words):
  gluonbert's BERTTokenizer, GluonNLP's, and Hugging Face's fast (Rust) tokenizer;
- padding waste with and without length bucketing on a long-tailed length distribution;
- the GEMM peak (one large ``FullyConnected``, float32 / bfloat16 / int8), timed in the
  same interleaved rounds as each inference section's models, and, for every inference
  row, the achieved matrix-product GFLOP/s (padding included) as a fraction of that peak.

Variants are timed interleaved (A, B, C, A, B, C, ...) and repeated; the table gives the
minimum and the median over the repeats. Hugging Face rows run in a separate interpreter
(``--hf-python``, e.g. a virtualenv with torch and transformers), as do gluonbert's
bfloat16 training rows (MXNet's AMP is process-wide); the timings are taken inside that
process and interleaved with the others all the same. Each section (an inference or
training size, tokenization, ...) runs in a fresh interpreter, so that its memory is given
back before the next (BERT-base inference with four MXNet variants holds about 6 GB);
``--no-isolate`` runs everything in one process (the default with ``--quick``).

    python benchmarks/bench_suite.py                                  # full run (minutes)
    python benchmarks/bench_suite.py --hf-python /work/refvenv/bin/python
    python benchmarks/bench_suite.py --only inference --sizes minilm_6_384_12
    python benchmarks/bench_suite.py --quick                          # tiny smoke run

Options: ``--only`` takes groups (inference, training, tokenization, padding, gemm);
``--variants`` keeps rows whose variant contains one of the given substrings.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

GROUPS = ('inference', 'training', 'tokenization', 'padding', 'gemm')
FULL = dict(sizes=('bert_12_768_12', 'minilm_6_384_12'), infer_batch=(32, 128),
            train_batch=(8, 128), repeats=5, warmup=1, gemm=(4096, 4096, 4096),
            token_texts=400, token_words=400, token_repeats=5, padding_examples=20000,
            calib_batches=2)
QUICK = dict(sizes=('tiny',), infer_batch=(4, 16), train_batch=(4, 16), repeats=2, warmup=1,
             gemm=(256, 256, 256), token_texts=16, token_words=400, token_repeats=2,
             padding_examples=2000, calib_batches=1)
PAUSE = 0.2  # seconds before each timed round: lets other processes' OpenMP threads sleep


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='tiny sizes and 2 repeats: a smoke test, not a measurement')
    parser.add_argument('--only', default=None,
                        help=f'comma-separated groups to run, from {",".join(GROUPS)}')
    parser.add_argument('--variants', default=None,
                        help='comma-separated substrings: keep only variants containing one '
                             '(e.g. "gluonbert,HF")')
    parser.add_argument('--sizes', default=None,
                        help='comma-separated gluonbert presets (default bert_12_768_12,'
                             'minilm_6_384_12; tiny with --quick)')
    parser.add_argument('--repeats', type=int, default=None, help='timed rounds per variant')
    parser.add_argument('--threads', type=int, default=None,
                        help='OpenMP / torch threads (default: gluonbert default = physical '
                             'cores)')
    parser.add_argument('--hf-python', default=None,
                        help="interpreter with torch and transformers for the Hugging Face "
                             "rows (default: this one if it can import them); 'none' skips them")
    parser.add_argument('--json', default=None, help='also write the results to this file')
    parser.add_argument('--isolate', dest='isolate', action='store_true', default=None,
                        help='run each section (GEMM, inference per size, ...) in its own '
                             'interpreter, so that memory is returned between sections '
                             '(default, except with --quick)')
    parser.add_argument('--no-isolate', dest='isolate', action='store_false')
    parser.add_argument('--worker', choices=('hf', 'mx-amp'), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument('--section', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(',')) - set(GROUPS)
        if unknown:
            parser.error(f'--only: unknown group(s) {", ".join(sorted(unknown))}; '
                         f'choose from {", ".join(GROUPS)}')
    if args.repeats is not None and args.repeats < 1:
        parser.error('--repeats must be >= 1')
    return args


# ----------------------------------------------------------------------------- helpers
def matmul_flops(cfg, seq_len):
    """Matrix-product FLOPs of one forward pass of one sequence (padding included)."""
    units, hidden, layers = cfg['units'], cfg['hidden_size'], cfg['num_layers']
    per_layer = (2 * seq_len * units * 3 * units      # fused query/key/value projection
                 + 2 * seq_len * units * units        # attention output projection
                 + 2 * 2 * seq_len * units * hidden   # feed-forward network
                 + 2 * 2 * seq_len * seq_len * units)  # scores and context
    return layers * per_layer + 2 * units * units     # + pooler


def random_batch(cfg, batch_size, seq_len, seed=0):
    """numpy (words, segments, valid_length, labels)."""
    import numpy as np
    rng = np.random.RandomState(seed)
    words = rng.randint(1, cfg['vocab_size'], (batch_size, seq_len)).astype('float32')
    segments = np.zeros((batch_size, seq_len), dtype='float32')
    segments[:, seq_len // 2:] = 1
    valid = rng.randint(seq_len // 2, seq_len + 1, batch_size).astype('float32')
    valid[0] = seq_len
    for row, length in enumerate(valid.astype(int)):
        words[row, length:] = 0
        segments[row, length:] = 0
    labels = rng.randint(0, 2, batch_size).astype('float32')
    return words, segments, valid, labels


def long_texts(count, words_per_text):
    """The bundled reviews, each repeated to at least ``words_per_text`` words."""
    from gluonbert.data import load_sample_reviews
    reviews = [t for split in ('train', 'test') for t, _ in load_sample_reviews(split)]
    texts = []
    for index in range(count):
        base = reviews[index % len(reviews)].split()
        words = list(base)
        while len(words) < words_per_text:
            words += base
        texts.append(' '.join(words))
    return texts


def minilm_dir():
    try:
        from gluonbert.pretrained import _minilm_directory
        return _minilm_directory()
    except Exception:  # pylint: disable=broad-except
        return None


# ---------------------------------------------------------------------------- workers
class Worker:
    """A benchmark process driven over stdin/stdout with one JSON object per line."""

    def __init__(self, python, kind, threads):
        env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
        if kind == 'mx-amp':
            env['PYTHONPATH'] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env['OMP_NUM_THREADS'] = str(threads)
        self.log = tempfile.TemporaryFile(mode='w+')  # the worker's stderr, for its last words
        self.proc = subprocess.Popen([python, os.path.abspath(__file__), '--worker', kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)
        self.hello = self.call({'cmd': 'hello'})

    def call(self, request):
        try:
            self.proc.stdin.write(json.dumps(request) + '\n')
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ''
        if not line:
            self.proc.wait()
            self.log.seek(0)
            last = [ln.strip() for ln in self.log.read().splitlines() if ln.strip()][-1:]
            return {'error': f'worker exited (status {self.proc.returncode})'
                             f'{": " + last[0] if last else ""}'}
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.call({'cmd': 'quit'})
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def _worker_main(kind):
    """Serve requests: setup a variant, time it, free it. stdout carries the protocol only."""
    out = sys.stdout
    sys.stdout = sys.stderr  # libraries' prints must not corrupt the protocol
    variants = {}
    handlers = _hf_handlers() if kind == 'hf' else _mx_amp_handlers()
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request['cmd']
        try:
            if cmd == 'quit':
                out.write('{}\n')
                out.flush()
                return
            if cmd == 'hello':
                reply = handlers['hello']()
            elif cmd == 'setup':
                variants[request['name']] = handlers[request['kind']](request)
                reply = {'ok': True}
            elif cmd == 'time':
                run = variants[request['name']]
                start = time.perf_counter()
                run(request.get('iters', 1))
                reply = {'seconds': time.perf_counter() - start}
            elif cmd == 'free':
                variants.pop(request['name'], None)
                import gc
                gc.collect()
                reply = {'ok': True}
            else:
                reply = {'error': f'unknown command {cmd}'}
        except Exception as err:  # pylint: disable=broad-except
            reply = {'error': f'{type(err).__name__}: {err}'[:300]}
        out.write(json.dumps(reply) + '\n')
        out.flush()


def _hf_handlers():
    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '0')) or torch.get_num_threads())

    def hello():
        return {'torch': torch.__version__, 'transformers': transformers.__version__,
                'threads': torch.get_num_threads()}

    models = {}  # one model per shape and mode: the fp32 and bf16-autocast rows share it

    def model(request, mode):
        key = (json.dumps(request['config'], sort_keys=True), request.get('weights'), mode)
        if key in models:
            return models[key]
        cfg = request['config']
        weights = request.get('weights')
        if weights:
            net = BertForSequenceClassification.from_pretrained(weights, num_labels=2)
        else:
            torch.manual_seed(0)
            net = BertForSequenceClassification(BertConfig(
                vocab_size=cfg['vocab_size'], hidden_size=cfg['units'],
                num_hidden_layers=cfg['num_layers'], num_attention_heads=cfg['num_heads'],
                intermediate_size=cfg['hidden_size'],
                max_position_embeddings=cfg['max_length'], num_labels=2))
        net = net.eval() if mode == 'inference' else net.train()
        optimizer = (torch.optim.AdamW(net.parameters(), lr=5e-5, weight_decay=0.01)
                     if mode == 'training' else None)
        models.clear()  # keep one model (and optimizer) alive at a time
        models[key] = (net, optimizer)
        return models[key]

    def tensors(request):
        import numpy as np
        cfg = request['config']
        batch_size, seq_len = request['batch']
        rng = np.random.RandomState(0)
        valid = rng.randint(seq_len // 2, seq_len + 1, batch_size)
        valid[0] = seq_len
        ids = torch.tensor(rng.randint(1, cfg['vocab_size'], (batch_size, seq_len)))
        mask = torch.tensor((np.arange(seq_len)[None, :] < valid[:, None]).astype('int64'))
        segments = torch.zeros((batch_size, seq_len), dtype=torch.long)
        labels = torch.tensor(rng.randint(0, 2, batch_size))
        return ids, mask, segments, labels

    def autocast(request):
        if request['dtype'] == 'bfloat16':
            return torch.autocast('cpu', dtype=torch.bfloat16)
        import contextlib
        return contextlib.nullcontext()

    def inference(request):
        net, _ = model(request, 'inference')
        ids, mask, segments, _ = tensors(request)

        def run(iters):
            with torch.inference_mode(), autocast(request):
                for _ in range(iters):
                    _ = net(input_ids=ids, attention_mask=mask, token_type_ids=segments).logits
        return run

    def training(request):
        net, optimizer = model(request, 'training')
        ids, mask, segments, labels = tensors(request)

        def run(iters):
            for _ in range(iters):
                with autocast(request):
                    loss = net(input_ids=ids, attention_mask=mask, token_type_ids=segments,
                               labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return run

    def tokenization(request):
        from transformers import BertTokenizerFast
        tokenizer = BertTokenizerFast(vocab_file=request['vocab'], do_lower_case=True)
        texts = request['texts']

        def run(iters):
            for _ in range(iters):
                tokenizer(texts, add_special_tokens=False)['input_ids']
        return run

    return {'hello': hello, 'inference': inference, 'training': training,
            'tokenization': tokenization}


def _mx_amp_handlers():
    """gluonbert training with bfloat16 AMP, which MXNet turns on for the whole process."""
    import mxnet as mx
    from gluonbert.fast import init_amp_bfloat16
    init_amp_bfloat16()

    def hello():
        return {'mxnet': mx.__version__}

    def training(request):
        return _gluonbert_train_step(request['config'], request['batch'])

    return {'hello': hello, 'training': training}


def _gluonbert_train_step(cfg, batch, gluonnlp_model=False):
    import mxnet as mx
    from mxnet import autograd, gluon
    import gluonbert
    from gluonbert.train import make_trainer
    mx.random.seed(0)
    config = gluonbert.BERTConfig(**cfg)
    if gluonnlp_model:
        import gluonnlp as nlp
        net = nlp.model.BERTClassifier(gluonnlp_bert(cfg), num_classes=2, dropout=0.1)
        net.classifier.initialize(mx.init.Normal(0.02))
    else:
        net = gluonbert.BERTClassifier(gluonbert.BERTModel(config), num_classes=2)
        net.initialize()
    net.hybridize(static_alloc=True, static_shape=True)
    if gluonnlp_model:
        # as GluonNLP's fine-tuning scripts do it: its BERTAdam, no decay on LayerNorm/bias
        params = {name: p for name, p in net.collect_params().items() if p.grad_req != 'null'}
        for name, param in params.items():
            if name.endswith(('gamma', 'beta', 'bias')):
                param.wd_mult = 0.0
        trainer = gluon.Trainer(params, 'bertadam',
                                {'learning_rate': 5e-5, 'epsilon': 1e-6, 'wd': 0.01})
    else:
        trainer = make_trainer(net, optimizer='adamw', lr=5e-5)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    words, segments, valid, labels = (mx.nd.array(x) for x in random_batch(cfg, *batch))

    def run(iters):
        for _ in range(iters):
            with autograd.record():
                loss = loss_fn(net(words, segments, valid), labels).mean()
            loss.backward()
            trainer.step(1)
        mx.nd.waitall()
    return run


# ---------------------------------------------------------------------------- variants
class Variant:
    """A timed thing: ``seconds(iters)``; ``items`` per iteration; a remote or local run."""

    def __init__(self, group, name, unit, items, run=None, worker=None, flops=None,
                 peak=None, note=''):
        self.group, self.name, self.unit, self.items = group, name, unit, items
        self.run, self.worker, self.flops, self.peak, self.note = run, worker, flops, peak, note
        self.speeds, self.error = [], None

    def seconds(self, iters):
        if self.worker is not None:
            reply = self.worker.call({'cmd': 'time', 'name': self.key, 'iters': iters})
            if 'error' in reply:
                raise RuntimeError(reply['error'])
            return reply['seconds']
        start = time.perf_counter()
        self.run(iters)
        return time.perf_counter() - start

    @property
    def key(self):
        return f'{self.group}:{self.name}'


def setup_remote(worker, variant, request):
    """Create ``variant`` in ``worker``; on failure mark it with the error."""
    reply = worker.call({'cmd': 'setup', 'name': variant.key, **request})
    if 'error' in reply:
        variant.error = reply['error']
    variant.worker = worker
    return variant


def measure(variants, repeats, warmup, iters=1):
    """Warm up every variant, then time them round-robin ``repeats`` times."""
    live = [v for v in variants if v.error is None]
    for variant in live:
        try:
            for _ in range(warmup):
                variant.seconds(iters)
        except Exception as err:  # pylint: disable=broad-except
            variant.error = f'{type(err).__name__}: {err}'[:200]
    live = [v for v in live if v.error is None]
    for _ in range(repeats):
        for variant in live:
            time.sleep(PAUSE)
            try:
                seconds = variant.seconds(iters)
            except Exception as err:  # pylint: disable=broad-except
                variant.error = f'{type(err).__name__}: {err}'[:200]
                continue
            variant.speeds.append(variant.items * iters / seconds)
    for variant in variants:
        variant.run = None  # free the models
        if variant.worker is not None and variant.error is None:
            variant.worker.call({'cmd': 'free', 'name': variant.key})


# ------------------------------------------------------------------------------ groups
def preset_config(name):
    import gluonbert
    return gluonbert.BERTConfig.from_preset(name).to_dict()


def gluonnlp_bert(cfg):
    import mxnet as mx
    import gluonbert
    model = gluonbert.convert.gluonnlp_model(gluonbert.BERTConfig(**cfg))
    model.initialize(mx.init.Normal(0.02))
    return model


def hf_variants(group, unit, size, batch, hf, keep, flops=None):
    """The Hugging Face fp32 and bf16-autocast variants of ``group`` ('inference' or
    'training'), run by the HF worker (or marked missing)."""
    batch_size, seq_len = batch
    cfg = preset_config(size)
    variants = []
    for dtype, short in (('float32', 'fp32'), ('bfloat16', 'bf16 autocast')):
        name = f'HF transformers {short}'
        if not keep(name):
            continue
        variant = Variant(group, f'{name} ({size} {batch_size}x{seq_len})', unit, batch_size,
                          flops=flops, peak=dtype if flops else None)
        if hf.worker is None:
            variant.error = hf.missing
        else:
            setup_remote(hf.worker, variant, {
                'kind': group, 'config': cfg, 'batch': [batch_size, seq_len],
                'dtype': dtype, 'weights': hf.weights(size)})
        variants.append(variant)
    return variants


def inference_group(size, settings, hf, keep):
    import mxnet as mx
    import gluonbert
    from gluonbert import fast
    cfg = preset_config(size)
    batch_size, seq_len = settings['infer_batch']
    seq_len = min(seq_len, cfg['max_length'])
    flops = matmul_flops(cfg, seq_len)
    reference = gluonnlp_bert(cfg)
    net = gluonbert.BERTClassifier(gluonbert.from_gluonnlp(reference), num_classes=2)
    net.classifier.initialize(mx.init.Normal(0.02))
    inputs = tuple(mx.nd.array(x) for x in random_batch(cfg, batch_size, seq_len)[:3])
    calib = [tuple(mx.nd.array(x) for x in random_batch(cfg, batch_size, seq_len, seed=s)[:3])
             for s in range(1, 1 + settings['calib_batches'])]

    def runner(model):
        def run(iters):
            for _ in range(iters):
                outputs = model(*inputs)
            for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
                out.wait_to_read()
        return run

    label = f'{size} {batch_size}x{seq_len}'
    variants = []

    def add(name, make, peak):
        if not keep(name):
            return
        variant = Variant('inference', f'{name} ({label})', 'seq/s', batch_size,
                          flops=flops, peak=peak)
        try:
            variant.run = runner(make())
        except Exception as err:  # pylint: disable=broad-except
            variant.error = f'{type(err).__name__}: {err}'[:200]
        variants.append(variant)

    add('gluonbert fp32', lambda: fast.to_float32(net), 'float32')
    add('gluonbert bf16', lambda: fast.to_bfloat16(net), 'bfloat16')
    add('gluonbert int8', lambda: fast.quantize_int8(net, calib), 'int8')

    def make_reference():
        reference.hybridize(static_alloc=True, static_shape=True)
        return reference
    add('GluonNLP fp32', make_reference, 'float32')
    variants += hf_variants('inference', 'seq/s', size, (batch_size, seq_len), hf, keep,
                            flops=flops)
    # the GEMM peak, timed in the same rounds: machine noise hits it and the models alike
    variants = gemm_group(settings, settings['repeats'], during=size) + variants
    measure(variants, settings['repeats'], settings['warmup'])
    return variants


def training_group(size, settings, hf, keep, amp_worker):
    cfg = preset_config(size)
    batch_size, seq_len = settings['train_batch']
    seq_len = min(seq_len, cfg['max_length'])
    label = f'{size} {batch_size}x{seq_len}'
    variants = []
    for name, nlp_model in (('gluonbert fp32', False), ('GluonNLP fp32', True)):
        if keep(name):
            variant = Variant('training', f'{name} ({label})', 'samples/s', batch_size)
            try:
                variant.run = _gluonbert_train_step(cfg, (batch_size, seq_len),
                                                    gluonnlp_model=nlp_model)
            except Exception as err:  # pylint: disable=broad-except
                variant.error = f'{type(err).__name__}: {err}'[:200]
            variants.append(variant)
    if keep('gluonbert bf16 AMP'):
        variant = Variant('training', f'gluonbert bf16 AMP ({label})', 'samples/s', batch_size)
        worker = amp_worker()
        if 'error' in worker.hello:
            variant.error = worker.hello['error']
        else:
            setup_remote(worker, variant, {'kind': 'training', 'config': cfg,
                                           'batch': [batch_size, seq_len]})
        variants.append(variant)
    variants += hf_variants('training', 'samples/s', size, (batch_size, seq_len), hf, keep)
    measure(variants, settings['repeats'], settings['warmup'])
    return variants


def tokenization_group(settings, hf, keep):
    import collections
    import gluonnlp as nlp
    from gluonbert.pretrained import load_pretrained
    texts = long_texts(settings['token_texts'], settings['token_words'])
    _, vocab, tokenizer = load_pretrained('minilm')
    specials = set(vocab.special_tokens)
    nlp_vocab = nlp.vocab.BERTVocab(collections.Counter(
        {t: 1 for t in vocab.idx_to_token if t not in specials}))
    nlp_tokenizer = nlp.data.BERTTokenizer(nlp_vocab, lower=True)
    same = all(tokenizer(t) == nlp_tokenizer(t) for t in texts[:20])
    words = sum(len(t.split()) for t in texts) / len(texts)
    label = f'{len(texts)} texts, ~{words:.0f} words'
    variants = []

    def add(name, tokenize, note=''):
        if keep(name):
            variants.append(Variant('tokenization', f'{name} ({label})', 'texts/s', len(texts),
                                    run=lambda iters: [tokenize(t) for _ in range(iters)
                                                       for t in texts], note=note))
    add('gluonbert BERTTokenizer', tokenizer,
        'same tokens as GluonNLP' if same else 'tokens DIFFER from GluonNLP')
    add('GluonNLP BERTTokenizer', nlp_tokenizer)
    name = 'HF BertTokenizerFast (batched, Rust)'
    if keep(name):
        variant = Variant('tokenization', f'{name} ({label})', 'texts/s', len(texts))
        directory = minilm_dir()
        if hf.worker is None:
            variant.error = hf.missing
        elif directory is None:
            variant.error = 'no vocab.txt (the MiniLM wheel is not installed)'
        else:
            setup_remote(hf.worker, variant, {'kind': 'tokenization', 'texts': texts,
                                              'vocab': os.path.join(directory, 'vocab.txt')})
        variants.append(variant)
    measure(variants, settings['token_repeats'], 1)
    return variants


def padding_group(settings, keep):
    """Padding waste on a long-tailed (log-normal) length distribution, batch 32."""
    import numpy as np
    from gluonbert.data import BucketSampler, padding_waste
    from gluonbert.data.batching import _PlainSampler
    rng = np.random.RandomState(0)
    lengths = np.clip(rng.lognormal(np.log(120), 0.7, settings['padding_examples']),
                      8, 512).astype(int)
    label = (f'{len(lengths)} examples, lengths median {int(np.median(lengths))}, '
             f'p99 {int(np.percentile(lengths, 99))}, max {lengths.max()}; batch 32')
    rows = []
    for name, sampler in (('no bucketing (shuffled)', _PlainSampler(lengths, 32, seed=0)),
                          ('BucketSampler, 10 buckets', BucketSampler(lengths, 32, seed=0)),
                          ('BucketSampler, 100 buckets',
                           BucketSampler(lengths, 32, num_buckets=100, seed=0)),
                          ('sorted by length (lower bound)',
                           BucketSampler(lengths, 32, shuffle=False))):
        if keep(name):
            waste = [100 * padding_waste(lengths, sampler.batches())]
            if sampler.shuffle:  # a few epochs: the waste varies with the shuffle
                waste = []
                for epoch in range(3):
                    sampler.set_epoch(epoch)
                    waste.append(100 * padding_waste(lengths, sampler.batches()))
            variant = Variant('padding waste', name, '% padding', 1, note=label)
            variant.speeds = waste
            rows.append(variant)
    return rows


def gemm_group(settings, repeats, during=None):
    """Peak matrix-product throughput: one large FullyConnected per dtype.

    With ``during`` (an inference section's label) the variants are returned unmeasured, to
    be timed in the same interleaved rounds as that section's models.
    """
    import mxnet as mx
    from mxnet.contrib import quantization
    from mxnet.contrib.amp.amp import bfloat16
    from gluonbert.hardware import bf16_support
    m, k, n = settings['gemm']
    x = mx.nd.random.normal(shape=(m, k))
    w = mx.nd.random.normal(shape=(n, k))
    flops = 2 * m * k * n
    label = f'FullyConnected {m}x{k} @ {k}x{n}'
    xb, wb = mx.nd.amp_cast(x, dtype=bfloat16), mx.nd.amp_cast(w, dtype=bfloat16)
    dense = mx.gluon.nn.Dense(n, in_units=k, use_bias=False)
    dense.initialize()
    dense.hybridize(static_alloc=True, static_shape=True)
    dense(x)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # MXNet: "Cannot decide type for ... data"
        int8 = quantization.quantize_net_v2(dense, quantized_dtype='auto', calib_data=[[x]],
                                            calib_mode='naive', ctx=mx.cpu())
    int8.hybridize(static_alloc=True, static_shape=True)
    runs = {
        'float32': lambda: mx.nd.FullyConnected(x, w, num_hidden=n, no_bias=True),
        'bfloat16': lambda: mx.nd.FullyConnected(xb, wb, num_hidden=n, no_bias=True),
        'int8': lambda: int8(x),
    }
    bf16, why_not = bf16_support()
    variants = []
    for dtype, make in runs.items():
        def run(iters, make=make):
            for _ in range(iters):
                out = make()
            out.wait_to_read()
        notes = {'int8': 'quantized_net_v2 Dense incl. input quantize',
                 'bfloat16': 'bf16 inputs and weights'}
        where = f'; timed with the {during} inference rows' if during else ''
        variants.append(Variant('GEMM peak', f'{dtype} ({label}{where})', 'GFLOP/s',
                                flops / 1e9, run=run, note=notes.get(dtype, ''), peak=dtype))
        if dtype == 'bfloat16' and not bf16:  # oneDNN would fail inside the kernel
            variants[-1].error = f'skipped: {why_not}'
    if during is None:
        measure(variants, max(3, repeats), 1)
    return variants


class HFRunner:
    """The Hugging Face worker, or why there is none."""

    def __init__(self, python, threads):
        self.worker, self.missing = None, None
        if python == 'none':
            self.missing = 'not installed (skipped: --hf-python none)'
            return
        if python is None:
            import importlib.util
            if not (importlib.util.find_spec('torch') and
                    importlib.util.find_spec('transformers')):
                self.missing = ('not installed (torch/transformers not importable here; pass '
                                '--hf-python PYTHON)')
                return
            python = sys.executable
        worker = Worker(python, 'hf', threads)
        if 'error' in worker.hello:
            self.missing = f'not installed ({python}: {worker.hello["error"]})'
            worker.close()
            return
        self.worker = worker
        self.versions = worker.hello
        self._minilm = minilm_dir()

    def weights(self, size):
        return self._minilm if size == 'minilm_6_384_12' else None

    def close(self):
        if self.worker is not None:
            self.worker.close()


# ------------------------------------------------------------------------------ report
def fmt(value):
    if value >= 100:
        return f'{value:.0f}'
    if value >= 10:
        return f'{value:.1f}'
    return f'{value:.2f}'


def table(rows):
    """Markdown table of result rows (dicts); inference rows get their share of the peak."""
    peaks = {}  # (section, dtype) -> GFLOP/s; a section's own GEMM rows first
    for r in rows:
        if r['group'] == 'GEMM peak' and r['speeds']:
            peaks[(r.get('section'), r['peak'])] = statistics.median(r['speeds'])
            peaks.setdefault((None, r['peak']), peaks[(r.get('section'), r['peak'])])
    lines = ['| benchmark | variant | unit | min | median | notes |',
             '|---|---|---|---:|---:|---|']
    for r in rows:
        if not r['speeds']:
            reason = r['error'] or 'no measurement'
            cell = 'not installed' if reason.startswith('not installed') else 'n/a'
            lines.append(f"| {r['group']} | {r['name']} | {r['unit']} | {cell} | {cell} | "
                         f"{reason} |")
            continue
        median = statistics.median(r['speeds'])
        notes = [r['note']] if r['note'] else []
        if r['flops'] and r['peak'] and r['group'] != 'GEMM peak':
            achieved = median * r['flops'] / 1e9
            peak = peaks.get((r.get('section'), r['peak']), peaks.get((None, r['peak'])))
            share = f' = {achieved / peak:.0%} of the {r["peak"]} GEMM peak' if peak else ''
            notes.append(f'{achieved:.0f} GFLOP/s{share}')
        if r['error']:
            notes.append(f"partly failed: {r['error']}")
        lines.append(f"| {r['group']} | {r['name']} | {r['unit']} | {fmt(min(r['speeds']))} | "
                     f"{fmt(median)} | {'; '.join(notes)} |")
    return '\n'.join(lines)


def as_row(variant):
    return {'group': variant.group, 'name': variant.name, 'unit': variant.unit,
            'speeds': variant.speeds, 'error': variant.error, 'note': variant.note,
            'flops': variant.flops, 'peak': variant.peak}


def sections_for(groups, sizes):
    """Sections in run order. Each inference section also times the GEMM peak, in the same
    rounds as its models, for the share-of-peak notes."""
    # inference sections time the GEMM peak themselves; alone only when asked without them
    sections = ['gemm'] if 'gemm' in groups and 'inference' not in groups else []
    sections += [f'inference:{size}' for size in sizes if 'inference' in groups]
    sections += [f'training:{size}' for size in sizes if 'training' in groups]
    sections += [g for g in ('tokenization', 'padding') if g in groups]
    return sections


def run_section(section, settings, args, threads, keep):
    """Measure one section in this process; returns result rows."""
    group, _, size = section.partition(':')
    needs_hf = group in ('inference', 'training', 'tokenization')
    hf = HFRunner(args.hf_python if needs_hf else 'none', threads)
    amp = {}

    def amp_worker():
        if 'worker' not in amp:
            amp['worker'] = Worker(sys.executable, 'mx-amp', threads)
        return amp['worker']
    try:
        if group == 'gemm':
            variants = gemm_group(settings, settings['repeats'])
        elif group == 'inference':
            variants = inference_group(size, settings, hf, keep)
        elif group == 'training':
            variants = training_group(size, settings, hf, keep, amp_worker)
        elif group == 'tokenization':
            variants = tokenization_group(settings, hf, keep)
        else:
            variants = padding_group(settings, keep)
    finally:
        hf.close()
        if 'worker' in amp:
            amp['worker'].close()
    rows = [dict(as_row(v), section=section) for v in variants]
    return rows, (hf.versions if hf.worker is not None else None)


RESULTS_MARK = 'BENCH-SUITE-RESULTS '


def run_isolated(section, argv, threads):
    """Run one section in a fresh interpreter (all its memory is returned at exit)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.setdefault('MXNET_SUBGRAPH_VERBOSE', '0')
    env['PYTHONPATH'] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))] +
        ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv,
                           '--section', section], stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULTS_MARK):
            payload = json.loads(line[len(RESULTS_MARK):])
            return payload['rows'], payload['hf']
    why = ('killed (out of memory?)' if proc.returncode in (-9, 137)
           else f'exit status {proc.returncode}')
    group, _, size = section.partition(':')
    return [{'group': {'gemm': 'GEMM peak', 'padding': 'padding waste'}.get(group, group),
             'name': f'all variants ({size or group})', 'unit': '', 'speeds': [],
             'error': f'section {section} failed: {why}', 'note': '', 'flops': None,
             'peak': None}], None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        _worker_main(args.worker)
        return 0
    if args.threads:
        os.environ['OMP_NUM_THREADS'] = str(args.threads)
    settings = dict(QUICK if args.quick else FULL)
    if args.sizes:
        settings['sizes'] = tuple(s.strip() for s in args.sizes.split(',') if s.strip())
    if args.repeats:
        settings['repeats'] = settings['token_repeats'] = args.repeats
    groups = args.only.split(',') if args.only else list(GROUPS)
    wanted = [s.strip() for s in args.variants.split(',')] if args.variants else None

    def keep(name):
        return wanted is None or any(w in name for w in wanted)

    started = time.perf_counter()
    import gluonbert  # before mxnet: it sets MXNet's thread count
    import mxnet as mx
    from gluonbert._env import physical_cores
    threads = int(os.environ.get('OMP_NUM_THREADS') or physical_cores())
    for size in settings['sizes']:
        if size not in gluonbert.PRESETS:
            print(f'bench_suite: unknown size {size!r}; presets: {", ".join(gluonbert.PRESETS)}',
                  file=sys.stderr)
            return 2
    if args.section:
        rows, hf_versions = run_section(args.section, settings, args, threads, keep)
        print(RESULTS_MARK + json.dumps({'rows': rows, 'hf': hf_versions}), flush=True)
        return 0

    isolate = args.isolate if args.isolate is not None else not args.quick
    rows, hf_versions = [], None
    for section in sections_for(groups, settings['sizes']):
        section_started = time.perf_counter()
        if isolate:
            new_rows, versions = run_isolated(section, argv, threads)
        else:
            new_rows, versions = run_section(section, settings, args, threads, keep)
        rows += new_rows
        hf_versions = hf_versions or versions
        print(f'bench_suite: {section} done in {time.perf_counter() - section_started:.0f} s',
              file=sys.stderr, flush=True)
        if args.json:
            with open(args.json, 'w', encoding='utf-8') as f:
                json.dump(rows, f, indent=2)

    from gluonbert.hardware import bf16_support, cpu_info
    cpu = cpu_info().describe()
    bf16, why_not = bf16_support()
    versions = (f", torch {hf_versions['torch']}, transformers {hf_versions['transformers']}"
                if hf_versions else '')
    print(f'gluonbert {gluonbert.__version__}, mxnet {mx.__version__}{versions}; '
          f'{cpu}, {threads} threads (OMP_NUM_THREADS); '
          f'bf16 {"native" if bf16 else "rows skipped: " + why_not}; '
          f'fused CPU operators {"on" if gluonbert.ops.load() else "off"}; '
          f'{settings["repeats"]} interleaved rounds per variant'
          f'{" (--quick)" if args.quick else ""}; {time.perf_counter() - started:.0f} s')
    print(table(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
