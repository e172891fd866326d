"""pyflows: discovery-flow lifecycle for a multi-tenant migration-discovery platform, kept in PostgreSQL.

The SQL API in schema ``pyflows`` is the product; this package migrates it, wraps it for Python,
and gives operators the ``pyflows`` command line.
"""

__version__ = "0.1.0"
