"""The GEMM peak: one large ``FullyConnected`` per dtype (float32, bfloat16, int8)."""
import warnings

from .harness import Variant, measure


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
