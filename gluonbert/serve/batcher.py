"""Dynamic batching: one inference thread owns the model and answers queued requests in
batches.

A request's encoded inputs wait in one queue. The thread takes the oldest waiting input,
waits at most ``max_wait`` seconds after it arrived for more (less when a full batch is
there), then forms a batch around it of the waiting inputs nearest to it in length (so
that batches pad little), at most ``max_batch_size`` inputs and ``max_batch_tokens``
padded tokens. A request is answered (on its event loop) when its last input is. A
cancelled request (its client went away, or its time ran out) is dropped from the queue
at no cost; one cancelled after its batch started has its answers thrown away.
"""
import collections
import threading
import time

__all__ = ['Batcher', 'Pending', 'QueueFull']

# how many waiting inputs, oldest first, a batch is picked from
_LOOKAHEAD = 4


class QueueFull(Exception):
    """The queue cannot take a request's inputs now."""


class Pending:
    """One request in the queue: its encoded inputs, where its answers go, and a callback
    ``done(pending)`` run on the inference thread when the last one is in (or
    ``pending.error`` is set)."""
    __slots__ = ('encoded', 'logits', 'probabilities', 'remaining', 'done', 'cancelled',
                 'error', 'enqueued', 'started')

    def __init__(self, encoded, done):
        self.encoded = encoded
        self.logits = [None] * len(encoded)
        self.probabilities = [None] * len(encoded)
        self.remaining = len(encoded)
        self.done, self.cancelled, self.error = done, False, None
        self.enqueued = self.started = None


class Batcher:
    """The queue and its inference thread.

    Parameters
    ----------
    load : callable
        ``load() -> model`` (a :class:`~gluonbert.serve.model.ServedModel`), called on the
        inference thread, which then owns the model; it should also warm the model up.
    max_batch_size, max_batch_tokens, max_queue : int
    max_wait : float
        Seconds.
    observe : object, optional
        ``observe.batch(size, tokens, seconds)``, ``observe.queued(seconds)`` and
        ``observe.depth(inputs)`` are called as batches run (metrics).
    """

    def __init__(self, load, *, max_batch_size, max_wait, max_batch_tokens, max_queue,
                 observe=None):
        self._load = load
        self.max_batch_size, self.max_wait = max_batch_size, max_wait
        self.max_batch_tokens, self.max_queue = max_batch_tokens, max_queue
        self._observe = observe
        self._queue = collections.deque()  # (pending, index, length, arrival)
        self._cond = threading.Condition()
        self._stopping = False
        self.model = None
        self.load_error = None
        self.ready = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._main, name='gluonbert-inference',
                                        daemon=True)

    # ------------------------------------------------------------------ caller's side
    def start(self):
        self._thread.start()

    def depth(self):
        """Inputs waiting."""
        return len(self._queue)

    def submit(self, pending):
        """Queue ``pending``'s inputs; :class:`QueueFull` when they do not fit."""
        now = time.monotonic()
        with self._cond:
            if self._stopping:
                raise QueueFull('the server is stopping')
            if len(self._queue) + len(pending.encoded) > self.max_queue:
                raise QueueFull(f'{len(self._queue)} inputs wait already; the queue takes '
                                f'{self.max_queue} (--max-queue)')
            pending.enqueued = now
            for index, (ids, _) in enumerate(pending.encoded):
                self._queue.append((pending, index, len(ids), now))
            self._cond.notify()
        self._depth_changed()

    def cancel(self, pending):
        """Drop ``pending``'s waiting inputs; its answers, if any come, are not sent."""
        with self._cond:
            pending.cancelled = True  # its inputs still waiting go; those running finish
            self._queue = collections.deque(e for e in self._queue if e[0] is not pending)
        self._depth_changed()

    def stop(self, timeout=None):
        """Answer what is queued, then end the thread (waiting ``timeout`` seconds)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------ inference thread
    def _main(self):
        try:
            self.model = self._load()
        except BaseException as err:  # noqa: BLE001  reported by whoever waits on ready
            self.load_error = err
            self.finished.set()
            return
        self.ready.set()
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._run(batch)
        finally:
            self.finished.set()

    def _next_batch(self):
        """The next batch (a list of queue entries), None when stopping with none left."""
        with self._cond:
            while True:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return None
                # the oldest input still waiting (cancel() may have taken the one before)
                left = self._queue[0][3] + self.max_wait - time.monotonic()
                if self._stopping or len(self._queue) >= self.max_batch_size or left <= 0:
                    break
                self._cond.wait(left)
            batch = self._pick()
            now = time.monotonic()
            for entry in batch:
                if entry[0].started is None:
                    entry[0].started = now
        self._depth_changed()
        return batch

    def _pick(self):
        """Take a batch from the queue: the oldest input and those nearest it in length,
        within the size and padded-token caps (the lock is held)."""
        window = min(len(self._queue), _LOOKAHEAD * self.max_batch_size)
        candidates = sorted(range(window), key=lambda i: self._queue[i][2])

        def length(k):
            return self._queue[candidates[k]][2]

        low = high = at = candidates.index(0)  # the oldest input always goes
        target = length(at)
        while high - low + 1 < self.max_batch_size:
            can_low, can_high = low > 0, high + 1 < window
            if not (can_low or can_high):
                break
            take_low = can_low and (not can_high or
                                    target - length(low - 1) <= length(high + 1) - target)
            longest = length(high) if take_low else length(high + 1)
            if longest * (high - low + 2) > self.max_batch_tokens:
                break
            if take_low:
                low -= 1
            else:
                high += 1
        chosen = set(candidates[low:high + 1])
        batch = [self._queue[i] for i in sorted(chosen)]
        self._queue = collections.deque(e for i, e in enumerate(self._queue)
                                        if i not in chosen)
        return batch

    def _run(self, batch):
        started = time.monotonic()
        tokens = len(batch) * max(entry[2] for entry in batch)
        try:
            logits, probabilities = self.model.run([entry[0].encoded[entry[1]]
                                                    for entry in batch])
        except Exception as err:  # noqa: BLE001  the requests get a 500, the server goes on
            for pending in {id(e[0]): e[0] for e in batch}.values():
                if pending.error is None:
                    pending.error = err
                    pending.done(pending)
            return
        seconds = time.monotonic() - started
        if self._observe is not None:
            self._observe.batch(len(batch), tokens, seconds)
            for entry in batch:
                self._observe.queued(started - entry[3])
        for row, (pending, index, _, _) in enumerate(batch):
            pending.logits[index] = logits[row]
            pending.probabilities[index] = probabilities[row]
            pending.remaining -= 1
            if pending.remaining == 0 and pending.error is None:
                pending.done(pending)

    def _depth_changed(self):
        if self._observe is not None:
            self._observe.depth(len(self._queue))
