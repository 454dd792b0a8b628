"""Inference sequences/s: gluonbert float32 / bfloat16 / int8 (:mod:`gluonbert.fast`),
GluonNLP's BERTModel and Hugging Face, timed in the same rounds as the GEMM peak."""
from .gemm import gemm_group
from .harness import Variant, failure, measure
from .hf import hf_variants
from .inputs import gluonnlp_bert, preset_config, random_batch


def matmul_flops(cfg, seq_len):
    """Matrix-product FLOPs of one forward pass of one sequence (padding included)."""
    units, hidden, layers = cfg['units'], cfg['hidden_size'], cfg['num_layers']
    per_layer = (2 * seq_len * units * 3 * units      # fused query/key/value projection
                 + 2 * seq_len * units * units        # attention output projection
                 + 2 * 2 * seq_len * units * hidden   # feed-forward network
                 + 2 * 2 * seq_len * seq_len * units)  # scores and context
    return layers * per_layer + 2 * units * units     # + pooler


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
            variant.error = failure(err)
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
