"""Training samples/s (forward, backward, AdamW update; no clipping): gluonbert float32 and
bfloat16 AMP (in a worker: MXNet's AMP is process-wide), GluonNLP, Hugging Face."""
from .harness import Variant, failure, measure, setup_remote
from .hf import hf_variants
from .inputs import gluonnlp_bert, preset_config, random_batch


def train_step(cfg, batch, gluonnlp_model=False):
    """``run(iters)``: that many training steps of a classifier with random weights."""
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


def amp_worker_handlers():
    """The ``mx-amp`` worker's: gluonbert training with bfloat16 AMP, which MXNet turns on
    for the whole process."""
    import mxnet as mx
    from gluonbert.fast import init_amp_bfloat16
    init_amp_bfloat16()

    def hello():
        return {'mxnet': mx.__version__}

    def training(request):
        return train_step(request['config'], request['batch'])

    return {'hello': hello, 'training': training}


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
                variant.run = train_step(cfg, (batch_size, seq_len), gluonnlp_model=nlp_model)
            except Exception as err:  # pylint: disable=broad-except
                variant.error = failure(err)
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
