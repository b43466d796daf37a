#!/usr/bin/env python3
"""Prints what each make vm-test guest ran: per kernel, its version string,
how it booted, and each test binary's passed, failed and skipped tests,
naming every failure. Exits 1 if any test failed or a guest gave no
results.

usage: vm-report.py RESULTS_DIR KERNEL...
"""
import json
import os
import re
import sys

BINARIES = ("observer", "ebpfkernel", "integration")


def read_events(path):
    """Final action per test, and each test's output."""
    result, output = {}, {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            test = ev.get("Test")
            if ev.get("Action") == "output" and test:
                output.setdefault(test, []).append(ev.get("Output", ""))
            elif ev.get("Action") in ("pass", "fail", "skip", "run"):
                result[test or ""] = ev["Action"]
    return result, output


ASSERTION = re.compile(r"^\s*\w+_test\.go:\d+: ")


def failure_lines(out):
    """What to show of a failed test: what it asserted (its t.Error and
    t.Fatal lines, which a long log would push out of a tail), then the
    last lines of its output; long lines cut."""
    lines = "".join(out).splitlines()
    said = [l for l in lines if ASSERTION.match(l)][-6:]
    shown = said + ["..."] + lines[-8:] if said else lines[-12:]
    return [l if len(l) <= 600 else l[:600] + " [cut]" for l in shown]


def binary(res, kernel, name, failures):
    path = os.path.join(res, name + ".json")
    rc = open(os.path.join(res, name + ".rc")).read().split() if os.path.exists(os.path.join(res, name + ".rc")) else None
    if not os.path.exists(path):
        failures.append(f"{kernel}: {name}: no results (the guest did not run it)")
        return
    result, output = read_events(path)
    if rc is None:
        running = [t for t, a in result.items() if a == "run"]
        failures.append(f"{kernel}: {name}: cut short (the guest was stopped) while running {', '.join(running) or 'no test'}")
        print(f"  {name:<12} cut short while running {', '.join(running) or 'no test'}")
        return
    tests = {t: a for t, a in result.items() if t}
    counts = {a: sum(1 for x in tests.values() if x == a) for a in ("pass", "fail", "skip")}
    print(f"  {name:<12} {counts['pass']:4d} passed {counts['fail']:3d} failed {counts['skip']:3d} skipped  ({rc[1]} s, exit {rc[0]})")
    for t, a in sorted(tests.items()):
        if a == "fail":
            failures.append(f"{kernel}: {name}: {t}")
            print(f"    FAIL {t}\n" + "".join("      " + l + "\n" for l in failure_lines(output.get(t, []))))
        elif a == "skip" and "/" not in t:
            said = "".join(output.get(t, [])).strip().splitlines()
            print(f"    skip {t}: {said[-2] if len(said) > 1 else ''}".rstrip())
    if rc[0] != "0" and not counts["fail"]:
        failures.append(f"{kernel}: {name}: exited {rc[0]} with no failed test (a timeout or a crash)")
        print("".join(open(path, errors="replace").readlines()[-10:]))


def console_tail(res):
    path = os.path.join(res, "console.log")
    if not os.path.exists(path):
        return ""
    return "".join(open(path, errors="replace").readlines()[-20:])


def main():
    results, kernels = sys.argv[1], sys.argv[2:]
    failures = []
    for k in kernels:
        res = os.path.join(results, k)
        kver = open(os.path.join(res, "kernel")).read().strip() if os.path.exists(os.path.join(res, "kernel")) else "?"
        boot = open(os.path.join(res, "boot")).read().split() if os.path.exists(os.path.join(res, "boot")) else ["?", "?", "?"]
        print(f"kernel {k}: {kver}, {boot[0]}, {boot[1]} s")
        if boot[2] == "124":
            failures.append(f"{k}: the guest was stopped after {boot[1]} s (VM_GUEST_TIMEOUT)")
            print("  its console's last lines:\n" + console_tail(res))
        if kver == "?":
            failures.append(f"{k}: the guest wrote no results (see {res}/console.log)")
            print(console_tail(res))
            continue
        for name in BINARIES:
            binary(res, k, name, failures)
    if failures:
        print("vm-test: failed:\n  " + "\n  ".join(failures))
        return 1
    print("vm-test: every test passed on " + ", ".join(kernels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
