#!/usr/bin/env python3
"""Reads a test binary's test2json output and fails unless every test passed
or skipped with a reason that starts with the marker (a missing privilege).

usage: check-skips.py MARKER PACKAGE FILE
"""
import json
import sys


def main():
    marker, pkg, path = sys.argv[1:4]
    output, result = {}, {}
    bad_lines = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                bad_lines += 1
                continue
            test = ev.get("Test")
            if not test:
                if ev.get("Action") == "fail":
                    result[""] = "fail"
                continue
            if ev.get("Action") == "output":
                output.setdefault(test, []).append(ev.get("Output", ""))
            elif ev.get("Action") in ("pass", "fail", "skip"):
                result[test] = ev["Action"]
    problems = []
    for test, action in sorted(result.items()):
        said = "".join(output.get(test, []))
        if action == "fail":
            problems.append(f"{test or pkg}: FAIL\n{said}")
        elif action == "skip" and marker not in said:
            # A parent skipped through its subtests' skips is fine when they say it.
            subs = [t for t in result if t.startswith(test + "/")]
            if not subs or any(marker not in "".join(output.get(t, [])) for t in subs if result[t] == "skip"):
                problems.append(f"{test}: skipped without needing a privilege:\n{said}")
    passed = sum(1 for a in result.values() if a == "pass")
    skipped = sum(1 for a in result.values() if a == "skip")
    if not result or bad_lines > 0 and not passed:
        problems.append(f"{pkg}: no test results read from {path}")
    for p in problems:
        print(f"test-unprivileged: {pkg}: {p}", file=sys.stderr)
    print(f"test-unprivileged: {pkg}: {passed} passed, {skipped} skipped for a privilege, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
