"""The ``pyflows`` command line: a thin shell over the library (no SQL here).

Every failure is one line on stderr (``pyflows: ...``), or a JSON object with ``--json``, and a
documented exit code (docs/cli.md), never a traceback.

One module per command group, and one place for what they share:

- ``app``: the root command (``--dsn``, ``--embedded``) and the groups under it;
- ``schema``: ``migrate``, ``rollback``, ``check``;
- ``server``: ``demo`` and ``embedded``;
- ``tenants``, ``flows``, ``audit``, ``files``: those groups;
- ``base``: exit codes and the one map from errors to them, the target database, the tenant options,
  confirmations, ``--json``, durations;
- ``output``: what commands print (JSON or text) and the text of flows, gates, impacts and verdicts.
"""

from .app import cli, main
from .base import Exit, parse_duration

__all__ = ["cli", "main", "Exit", "parse_duration"]
