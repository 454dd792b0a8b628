"""Downloads: the one reachability probe every download check asks before it lets a
downloader (GluonNLP's IMDB, MXNet's model store) try the network, and the sha1 digest
downloaded files are verified with.

Those downloaders retry without a timeout when the network is down, so the package asks
first, with a bounded wait, and fails at once with instructions when the host does not
answer. ``GLUONBERT_OFFLINE=1`` skips the probe: every host is then unreachable.
"""
import os
import socket
import threading
from urllib.parse import urlparse

__all__ = ['PROBE_TIMEOUT', 'DEFAULT_GLUON_REPO', 'offline', 'reachable', 'reachable_url',
           'gluon_repo_url']

# Seconds one probe may take, name resolution included. A DNS lookup plus a TCP handshake
# takes well under a second on a working link, even a slow one; 3 s leaves room for a
# congested link without reporting it unreachable, and bounds the wait of an offline user
# before the error that says what to do.
PROBE_TIMEOUT = 3.0

# MXNet's default download repository (``mxnet.gluon.model_zoo.model_store.apache_repo_url``),
# overridden by ``MXNET_GLUON_REPO`` as MXNet and GluonNLP do.
DEFAULT_GLUON_REPO = 'https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/'


def offline():
    """Whether ``GLUONBERT_OFFLINE=1`` forbids network probes."""
    return os.environ.get('GLUONBERT_OFFLINE') == '1'


def reachable(host, port=443, timeout=PROBE_TIMEOUT):
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds.

    Parameters
    ----------
    host : str
    port : int, default 443
    timeout : float, default :data:`PROBE_TIMEOUT`
        Bounds the whole probe: name resolution cannot be given a timeout directly, so the
        probe runs in a daemon thread that is abandoned after ``timeout``.

    Returns
    -------
    bool
        False at once, without any network access, when ``GLUONBERT_OFFLINE=1``.
    """
    if offline() or not host:
        return False
    result = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def reachable_url(url, timeout=PROBE_TIMEOUT):
    """:func:`reachable` for the host of ``url``; the port is the URL's, else 443 for
    ``https`` and 80 otherwise."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == 'https' else 80)
    return reachable(parsed.hostname, port, timeout)


def gluon_repo_url():
    """The MXNet/GluonNLP download repository: ``MXNET_GLUON_REPO`` or the default."""
    return os.environ.get('MXNET_GLUON_REPO', DEFAULT_GLUON_REPO)
