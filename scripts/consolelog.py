# SPDX-License-Identifier: GPL-2.0
"""The lines of the emulated host's console log that the harness reads,
defined once for report.py, bench.py and soak-swap.sh.

The guest's init (userspace/init/init.c) frames each case of a list:
  "@@ START name" before it runs,
  "@@ END name how value [seconds]" after it (how: exit or signal).
apf-e2e ends a case with its verdict:
  "e2e: PASS not_present=N ready=N wall=S.Ss" or "e2e: FAIL (why) ... wall=S.Ss".
"""
import re

START = re.compile(r"^@@ START (\S+)")
END = re.compile(r"^@@ END (\S+) (\S+) (\S+)(?: (\d+))?")
VERDICT = re.compile(r"^e2e: (PASS|FAIL)\b")
FAILED = re.compile(r"^e2e: FAIL \(([^)]*)\)")
WALL = re.compile(r"\bwall=([\d.]+)s")


def exited_ok(end):
    """Whether an END match is a clean exit (status 0)."""
    return end.group(2) == "exit" and end.group(3) == "0"


def cases(path):
    """Yields (name, lines, end) for each case framed in the console log at
    `path`: its name, the lines between START and END (carriage returns
    stripped), and END's match, or None if the next case or the log's end
    came first."""
    name, lines = None, []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            start = START.match(line)
            if start:
                if name is not None:
                    yield name, lines, None
                name, lines = start.group(1), []
                continue
            if name is None:
                continue
            end = END.match(line)
            if end and end.group(1) == name:
                yield name, lines, end
                name = None
                continue
            lines.append(line)
    if name is not None:
        yield name, lines, None
