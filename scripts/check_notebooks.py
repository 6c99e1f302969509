#!/usr/bin/python3
"""Execute every notebook in notebooks/ with Deno's Jupyter kernel and write the outputs back.

usage: /usr/bin/python3 scripts/check_notebooks.py [NOTEBOOK.ipynb ...] [--no-write] [--grace S]

Exit status 1 when any cell raises (the failing notebook is still written, with its outputs up to
the error, unless --no-write). Needs Debian's python3-nbclient and `deno jupyter --install`.

Deno's kernel sometimes publishes a cell's result (or late stream output) on IOPub *after* its
"idle" status, and plain `jupyter nbconvert --execute` then drops it. So after each cell we keep
reading IOPub for a short grace period and attach late messages of that cell to it.
"""

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from queue import Empty

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


class GraceClient(NotebookClient):
    """NotebookClient that drains IOPub for `grace` seconds after each cell completes."""

    grace: float = 1.0

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type != "code" or not cell.source.strip():
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        sent: list[str] = []
        original = self.kc.execute

        def execute(*args, **kwargs):
            msg_id = original(*args, **kwargs)
            sent.append(msg_id)
            return msg_id

        self.kc.execute = execute
        try:
            try:
                result = await super().async_execute_cell(
                    cell, cell_index, execution_count, store_history
                )
            finally:
                self.kc.execute = original
        except CellExecutionError:
            if sent:
                await self._drain(sent[0], cell, cell_index)
            raise
        if sent:
            await self._drain(sent[0], cell, cell_index)
        return result

    async def _drain(self, msg_id: str, cell, cell_index: int) -> None:
        deadline = time.monotonic() + self.grace
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = await self.kc.iopub_channel.get_msg(timeout=left)
            except (Empty, asyncio.TimeoutError):
                return
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] in ("status", "execute_input"):
                continue
            self.log.info("late %s message attached to cell %d", msg["msg_type"], cell_index)
            self.process_message(msg, cell, cell_index)


def run(path: Path, write: bool, grace: float, timeout: int) -> tuple[bool, float, str]:
    nb = nbformat.read(path, as_version=4)
    client = GraceClient(
        nb,
        kernel_name="deno",
        timeout=timeout,
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.grace = grace
    t0 = time.monotonic()
    ok, why = True, ""
    try:
        client.execute()
    except CellExecutionError as e:
        ok, why = False, str(e).strip().splitlines()[-1] if str(e).strip() else "cell error"
    except Exception as e:  # dead kernel, timeout, ...
        ok, why = False, f"{type(e).__name__}: {e}"
    elapsed = time.monotonic() - t0
    # Error outputs in cells also count (a cell may print an error without failing the reply).
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            if ok:
                ok, why = False, f"cell {i} has an error output"
    if write:
        nbformat.write(nb, path)
    return ok, elapsed, why


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/*.ipynb)")
    ap.add_argument("--no-write", action="store_true", help="do not write outputs back")
    ap.add_argument("--grace", type=float, default=1.0, help="seconds to wait for late output")
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    args = ap.parse_args()
    # The kernel inherits this process's environment: WebGPU through Mesa's Vulkan drivers.
    os.environ.setdefault("DENO_WEBGPU_BACKEND", "vulkan")
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    os.environ.setdefault("NO_COLOR", "1")
    paths = [Path(p).resolve() for p in args.notebooks] or sorted(NOTEBOOKS.glob("*.ipynb"))
    if not paths:
        print("check_notebooks: no notebooks found", file=sys.stderr)
        return 1
    failed = 0
    for p in paths:
        print(f"check_notebooks: running {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p} ...",
              file=sys.stderr, flush=True)
        ok, elapsed, why = run(p, not args.no_write, args.grace, args.timeout)
        status = "ok" if ok else f"FAILED ({why})"
        print(f"check_notebooks: {p.name}: {status} in {elapsed:.1f}s", file=sys.stderr, flush=True)
        failed += 0 if ok else 1
    print(f"check_notebooks: {len(paths) - failed} passed, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
