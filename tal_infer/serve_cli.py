"""tal-serve: the re-identification service (HTTP API over a sharded gallery, on Ray Serve).

Starts a local Ray on this machine unless ``--address`` (or ``RAY_ADDRESS``) names a cluster;
binds to 127.0.0.1 unless told otherwise, and only with an access token off the loopback
(`tal_infer.cluster.service`, docs/scale.md).
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from .cli_common import friendly_errors
from .images import DEFAULT_MAX_PIXELS

EPILOG = """\b
Examples:
  tal-serve export/demo --gallery galleries/city --shards 4
  TAL_SERVE_TOKEN=... tal-serve export/demo --gallery galleries/city --host 0.0.0.0
  tal-serve export/demo --gallery galleries/city --token-file token.txt --address ray://head:10001
  curl -s 127.0.0.1:8000/health
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--gallery", required=True, type=click.Path(path_type=Path),
              help="The sharded gallery's folder (made when new).")
@click.option("--shards", type=int, default=None,
              help="Shards of a new gallery (an existing one keeps its count).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but the loopback needs an access token.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="File holding the access token (else the TAL_SERVE_TOKEN variable).")
@click.option("--address", default=None,
              help="Ray cluster to join; default RAY_ADDRESS, else a local Ray.")
@click.option("--max-request-mb", type=float, default=16.0, show_default=True,
              help="Largest request body accepted (413 beyond).")
@click.option("--max-images", type=int, default=64, show_default=True,
              help="Most images in one request.")
@click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest image (pixels its header declares) decoded.")
@click.option("--max-batch", type=int, default=16, show_default=True,
              help="Crops of concurrent requests embedded together.")
@click.option("--batch-wait-ms", type=float, default=10.0, show_default=True,
              help="Longest a crop waits for its batch to fill.")
@friendly_errors
def main(bundle: Path, gallery: Path, shards: int | None, host: str, port: int,
         token_file: Path | None, address: str | None, max_request_mb: float,
         max_images: int, max_pixels: int, max_batch: int, batch_wait_ms: float) -> None:
    """Serve embedding, adding, searching and removing crops over HTTP until interrupted."""
    from .cluster import service

    token = service.token_digest(service.read_token(token_file))
    config = service.ServiceConfig(
        str(gallery.absolute()), str(bundle.absolute()), shards, host, port, token,
        int(max_request_mb * 2**20), max_images, max_pixels, max_batch, batch_wait_ms / 1000)
    url = service.start(config, address)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a service manager's stop: clean up
    click.echo(f"serving on {url} ({'access token required' if token else 'no token: loopback only'}); "
               "Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    finally:
        service.stop()
