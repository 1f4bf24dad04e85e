"""Assertions, readers and helpers shared by the CLI tests."""

import contextlib
import json
import subprocess
import sys
import textwrap


def assert_one_line_error(result, *fragments):
    """A `CliRunner` result that failed as a user mistake should: exit 1, one `error:` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


def logged_losses(work_dir):
    """The total training loss of each logged iteration of the one training in `work_dir`."""
    (scalars,) = work_dir.glob("*/vis_data/scalars.json")
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@contextlib.contextmanager
def lock_held(run, stage="optimize-augs"):
    """Another process holds the run's lock as `stage` for the duration; yields that process."""
    holder = textwrap.dedent(f"""
        import time
        from clipgap_cli.rundir import Run
        with Run.open({str(run)!r}).writing({stage!r}):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
