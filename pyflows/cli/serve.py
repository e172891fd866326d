"""``pyflows serve``: the HTTP API (pyflows.http) as a server of its own, callers authenticated by JWT."""

from __future__ import annotations

import os
import secrets

import click

from .base import Exit, Target, fail


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (give 0.0.0.0 to listen on every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--pool-size", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Connections to the database (the application login's pool), in each worker.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes: one is CPU-bound at a few hundred requests a second.")
@click.option("--admin-dsn", envvar="PYFLOWS_ADMIN_DSN", metavar="DSN",
              help="A pyflows_admin login for the admin routes (default: $PYFLOWS_ADMIN_DSN; none: routes off).")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log a line for every request (uvicorn's access log, on standard output).")
@click.pass_obj
def serve(target: Target, host: str, port: int, pool_size: int, workers: int, admin_dsn: str | None,
          access_log: bool) -> None:
    """Serve the HTTP API (docs/http-api.md) over the database's application login. Callers send a bearer JWT:
    signed with the HS256 secret in $PYFLOWS_JWT_SECRET, or with the private key of the public key (PEM, or a
    file) in $PYFLOWS_JWT_PUBLIC_KEY; claims client_id, engagement_id, sub (the actor), exp, and pyflows_admin
    for the admin routes. Refuses to start without a key. Needs the http extra: pip install 'pyflows[http]'."""
    try:
        import uvicorn

        from .. import http
    except ImportError as exc:
        fail(f"pyflows serve needs the http extra (pip install 'pyflows[http]'): {exc}", Exit.USAGE)
    try:
        authenticate = http.JWTCaller.from_environment()
        console_secret = http.console_secret_from_environment()
    except ValueError as exc:
        fail(str(exc), Exit.USAGE)
    dsn = target.resolve()
    target.announce()
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"pyflows: the operator console: http://{shown}:{port}/console/ (docs/console.md)", err=True)
    if workers == 1:
        app = http.create_app(dsn, authenticate, admin_dsn, pool_size, console_secret=console_secret)
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log)
        return
    # Each worker process builds the same application from the same environment (http.app_from_environment),
    # with one console secret (CSRF tokens made by one worker are checked by another).
    os.environ.update({"PYFLOWS_SERVE_DSN": dsn, "PYFLOWS_SERVE_POOL_SIZE": str(pool_size)})
    os.environ.setdefault("PYFLOWS_CONSOLE_SECRET", secrets.token_hex(32))
    if admin_dsn:
        os.environ["PYFLOWS_ADMIN_DSN"] = admin_dsn
    uvicorn.run("pyflows.http:app_from_environment", factory=True, workers=workers, host=host, port=port,
                log_level="info", access_log=access_log)
