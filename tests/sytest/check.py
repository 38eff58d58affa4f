#!/usr/bin/env python3
"""Checks sytest results against issue 18's list (scripts/sytest.sh runs it).

    check.py LIST KNOWN_FAILURES RESULTS.tap [RESULTS.tap ...]

Every test named in LIST (one name a line, `#` comments) must be reported passed (`ok`,
not skipped) in one of the TAP files, except those named in KNOWN_FAILURES, which must
not pass (a known failure that passes is to be taken off that list). Prints the outcome
per group and exits 1 on any mismatch.
"""
import re
import sys


def names(path):
    # As sytest reads its -W and -B files: everything from a `#` on is a comment.
    out = []
    for line in open(path, encoding="utf-8"):
        line = re.sub(r"#.*", "", line).strip()
        if line:
            out.append(line)
    return out


def results(paths):
    """name -> "pass" | "skip" | "fail"; a pass in any file wins."""
    status = {}
    pattern = re.compile(r"^(ok|not ok) \d+ (?:\(expected fail\) )?(.*?)(?: \(\d+ subtests\))?(\s+# .*)?$")
    for path in paths:
        for line in open(path, encoding="utf-8", errors="replace"):
            m = pattern.match(line.rstrip("\n"))
            if not m:
                continue
            name, extra = m.group(2), (m.group(3) or "").lower()
            if m.group(1) == "ok" and "skip" not in extra:
                state = "pass"
            elif "skip" in extra:
                state = "skip"
            else:
                state = "fail"
            if status.get(name) != "pass":
                status[name] = state
    return status


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    listed, known = names(sys.argv[1]), set(names(sys.argv[2]))
    status = results(sys.argv[3:])
    unknown = sorted(known - set(listed))
    expected = [n for n in listed if n not in known]
    failed = [(n, status.get(n, "not run")) for n in expected if status.get(n) != "pass"]
    fixed = sorted(n for n in known if status.get(n) == "pass")
    print(f"sytest: {len(expected) - len(failed)} of {len(expected)} listed tests passed "
          f"({len(known)} known failures left out; {len(listed)} listed)")
    for n, s in failed:
        print(f"  FAILED ({s}): {n}")
    for n in fixed:
        print(f"  NOW PASSES, take it off the known failures: {n}")
    for n in unknown:
        print(f"  NOT ON THE LIST, take it off the known failures: {n}")
    sys.exit(1 if failed or fixed or unknown else 0)


if __name__ == "__main__":
    main()
