"""The server's Prometheus metrics, in a registry of its own (nothing global): requests by
route and status, request, queue and inference time, batch sizes and padded tokens, and
the queue's depth."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ['Metrics', 'CONTENT_TYPE_LATEST']

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The collectors, and the calls the batcher makes (:class:`~.batcher.Batcher`'s
    ``observe``)."""

    def __init__(self):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter('gluonbert_requests', 'HTTP requests answered',
                                ('route', 'status'), registry=registry)
        self.request_seconds = Histogram('gluonbert_request_duration_seconds',
                                         'Time from a request to its answer', ('route',),
                                         buckets=_SECONDS, registry=registry)
        self.queue_seconds = Histogram('gluonbert_queue_duration_seconds',
                                       'Time an input waited for its batch',
                                       buckets=_SECONDS, registry=registry)
        self.inference_seconds = Histogram('gluonbert_inference_duration_seconds',
                                           "Time of one batch's forward pass",
                                           buckets=_SECONDS, registry=registry)
        self.batch_size = Histogram('gluonbert_batch_size', 'Inputs per batch',
                                    buckets=_SIZES, registry=registry)
        self.batch_tokens = Histogram('gluonbert_batch_tokens', 'Padded tokens per batch',
                                      buckets=tuple(64 * 2 ** i for i in range(10)),
                                      registry=registry)
        self.queue_depth = Gauge('gluonbert_queue_depth', 'Inputs waiting for a batch',
                                 registry=registry)
        self.inputs = Counter('gluonbert_inputs', 'Texts (or text pairs) classified',
                              registry=registry)

    def answered(self, route, status, seconds):
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def batch(self, size, tokens, seconds):
        self.batch_size.observe(size)
        self.batch_tokens.observe(tokens)
        self.inference_seconds.observe(seconds)
        self.inputs.inc(size)

    def queued(self, seconds):
        self.queue_seconds.observe(seconds)

    def depth(self, inputs):
        self.queue_depth.set(inputs)

    def exposition(self):
        """The text format, as bytes."""
        return generate_latest(self.registry)
