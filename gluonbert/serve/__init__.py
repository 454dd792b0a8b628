"""``gluonbert-serve``'s server, between the fast paths and the commands:

- :mod:`.inputs`: a ``POST /predict`` body read and checked (TEI's shape), its errors;
- :mod:`.model`: :class:`~.model.ServedModel`, inputs encoded as ``gluonbert-predict``
  encodes them and padded batches run;
- :mod:`.batcher`: the queue and the one inference thread that owns the model (dynamic
  batching by length, size and padded tokens);
- :mod:`.metrics`: the Prometheus collectors;
- :mod:`.app`: the FastAPI application (needs the ``serve`` extra).

Nothing is imported here: the HTTP stack is an extra, loaded by who needs it.
"""
