#!/usr/bin/env python3
"""Where a configuration's added instructions go, per request, by function.

Reads the callgrind files scripts/instr.sh leaves in target/instr/ and prints, per
function (self cost, `--inclusive=no`), the instructions per request of CONFIG minus
those of BASELINE, each taken as (Ir(N2) - Ir(N1)) / (N2 - N1) so set-up cancels:

    scripts/instr_diff.py sampled bare                 # functions
    scripts/instr_diff.py sampled bare --callers memcpy  # who calls memcpy, and how often
    scripts/instr_diff.py not_sampled -                # one configuration alone

Options: --dir DIR (target/instr), --n1 5000, --n2 25000, --top 40.
"""

import argparse
import re
import subprocess

LINE = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(?:([<*>])\s+)?(.*?)(?: \(([\d,]+)x\))?(?: \[[^\]]*\])?$")


def short(name):
    name = re.sub(r"/root/\.cargo/registry/src/[^/]+/", "", name)
    name = re.sub(r"/rustc/[0-9a-f]+/library/", "std:", name)
    return name


def annotate(path, tree):
    args = ["callgrind_annotate", "--inclusive=no", "--auto=no", "--threshold=100", path]
    if tree:
        args.insert(1, "--tree=caller")
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()


def functions(path):
    """Self cost per function."""
    out = {}
    for line in annotate(path, False):
        m = LINE.match(line)
        if m and "PROGRAM TOTALS" not in line and not m.group(2):
            out[short(m.group(3))] = out.get(short(m.group(3)), 0) + int(m.group(1).replace(",", ""))
    return out


def callers(path, pattern):
    """(cost, calls) per caller of the functions matching `pattern`."""
    out, pending = {}, []
    for line in annotate(path, True):
        m = LINE.match(line)
        if not m or not m.group(2):
            continue
        name = short(m.group(3))
        if m.group(2) == "<":
            pending.append((name, int(m.group(1).replace(",", "")), int((m.group(4) or "0").replace(",", ""))))
        elif m.group(2) == "*":
            if re.search(pattern, name):
                for caller, cost, calls in pending:
                    c = out.setdefault(caller, [0, 0])
                    c[0] += cost
                    c[1] += calls
            pending = []
    return {k: tuple(v) for k, v in out.items()}


def per_request(args, config, load):
    a = load(f"{args.dir}/{config}.{args.n1}.callgrind")
    b = load(f"{args.dir}/{config}.{args.n2}.callgrind")
    n = args.n2 - args.n1

    def diff(x, y):
        if isinstance(x, tuple) or isinstance(y, tuple):
            x, y = x or (0, 0), y or (0, 0)
            return tuple((q - p) / n for p, q in zip(x, y))
        return ((y or 0) - (x or 0)) / n

    return {k: diff(a.get(k), b.get(k)) for k in set(a) | set(b)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("baseline", help="a configuration, or - for none")
    p.add_argument("--callers", metavar="REGEX", help="callers of the functions matching REGEX")
    p.add_argument("--dir", default="target/instr")
    p.add_argument("--n1", type=int, default=5000)
    p.add_argument("--n2", type=int, default=25000)
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()

    load = (lambda path: callers(path, args.callers)) if args.callers else functions
    x = per_request(args, args.config, load)
    y = per_request(args, args.baseline, load) if args.baseline != "-" else {}
    zero = (0.0, 0.0) if args.callers else 0.0

    def sub(a, b):
        return tuple(p - q for p, q in zip(a, b)) if args.callers else a - b

    d = {k: sub(x.get(k, zero), y.get(k, zero)) for k in set(x) | set(y)}
    cost = (lambda v: v[0]) if args.callers else (lambda v: v)
    total = sum(cost(v) for v in d.values())
    what = f"callers of /{args.callers}/" if args.callers else "functions (self cost)"
    print(f"{args.config} minus {args.baseline}, instructions per request, {what}: total {total:+.1f}")
    for k, v in sorted(d.items(), key=lambda kv: -abs(cost(kv[1])))[: args.top]:
        if args.callers:
            print(f"{v[0]:+9.1f}  {v[1]:+6.2f} calls  {k[:170]}")
        else:
            print(f"{v:+9.1f}  {k[:180]}")


if __name__ == "__main__":
    main()
