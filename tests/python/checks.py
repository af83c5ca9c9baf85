"""The reporting every client script shares: one line per check, and exit non-zero on the first
failure so that the Rust test running the script fails with the check's name and detail."""

import sys

passed = 0


def check(name, cond, detail=""):
    global passed
    if not cond:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    passed += 1
    print(f"ok   {name}")
