"""The CLI's batch delete and file drain stream: their peak memory (max RSS) for growing numbers of ids.

- ``flows delete --from-file F --force --dry-run --json``: F lists the ids of that many completed
  flows of one engagement (a dry run, so each size deletes and rolls back the same flows);
- ``files drain --root DIR --json``: that many queued objects under DIR (missing files, which count as
  removed).

Each command runs in its own process; its peak resident set size is read from the kernel
(``getrusage(RUSAGE_CHILDREN)`` in a wrapper process that runs only that command).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import PHASES, Conn, ensure_tenant, table, tenant

WRAPPER = ("import json, resource, subprocess, sys\n"
           "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
           "print(json.dumps({'returncode': done.returncode,\n"
           "                  'max_rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
CLI = [sys.executable, "-c", "from pyflows.cli import main; main()"]


def peak(args: Sequence[str]) -> dict[str, Any]:
    """Run the CLI with args in a child process; its exit code and max RSS (kB). Raises if it failed."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, *CLI, *args],
                          capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    if result["returncode"] != 0:
        raise RuntimeError(f"pyflows {' '.join(args[:6])} ... exited {result['returncode']}: {done.stderr[-2000:]}")
    return result


def run(conn: Conn, dsn: str, sizes: Sequence[int]) -> dict[str, Any]:
    client, engagement = tenant(0xE), tenant(0xE1)
    largest = max(sizes)
    with conn.transaction():
        ensure_tenant(conn, client, engagement)
        ids = [str(r[0]) for r in conn.execute(
            "insert into pyflows.discovery_flows (client_id, engagement_id, name, status, phases_completed) "
            "select %s, %s, 'memory ' || g, 'completed', %s from generate_series(1, %s) g returning id",
            (client, engagement, list(PHASES), largest)).fetchall()]
        # Entries other suites queued are not this suite's to drain (their files lie outside its root).
        conn.execute("update pyflows.file_cleanup_queue set done_at = now() where done_at is null")
    conn.execute("vacuum analyze pyflows.discovery_flows")
    context = ["--dsn", dsn, "flows", "--client", str(client), "--engagement", str(engagement), "--actor", "bench"]
    points = []
    with tempfile.TemporaryDirectory(prefix="pyflows-bench-") as tmp:
        for size in sizes:
            id_file = Path(tmp) / f"ids-{size}.txt"
            id_file.write_text("\n".join(ids[:size]) + "\n")
            delete = peak([*context, "delete", "--from-file", str(id_file), "--reason", "bench", "--force",
                           "--dry-run", "--json"])
            conn.execute("insert into pyflows.file_cleanup_queue (client_id, engagement_id, storage_uri) "
                         "select %s, %s, %s || '/missing-' || g || '.csv' "
                         "from generate_series(1, %s) g", (client, engagement, Path(tmp).as_uri(), size))
            drain = peak(["--dsn", dsn, "files", "drain", "--root", tmp, "--json"])
            left = conn.execute("select count(*) from pyflows.file_cleanup_queue where done_at is null").fetchone()[0]
            if left:
                raise AssertionError(f"the drain left {left} of {size} entries queued")
            points.append({"ids": size, "delete_max_rss_mb": delete["max_rss_kb"] / 1024,
                           "drain_max_rss_mb": drain["max_rss_kb"] / 1024})
    return {"points": points}


def markdown(report: dict[str, Any]) -> list[str]:
    return ["### CLI peak memory (max RSS) by number of ids", "",
            *table(["ids", "flows delete --from-file (MB)", "files drain (MB)"],
                   [[f"{p['ids']:,}", f"{p['delete_max_rss_mb']:.1f}", f"{p['drain_max_rss_mb']:.1f}"]
                    for p in report["points"]])]
