"""Reads "WHO CASE VALUE" lines and prints each case's medians side by side, one column per WHO named on the command
line (default: native kiln1 kiln2), in the order the cases first appear; "-" where a WHO has no runs of a case. The
unit is read off the case name's end (_us, MiB_per_s, _per_s, _per_op), else ns/op.

    ... | python3 bench/medians.py [WHO...]"""
import statistics
import sys

columns = sys.argv[1:] or ["native", "kiln1", "kiln2"]
runs = {}
cases = []
for line in sys.stdin:
    who, case, value = line.split()
    runs.setdefault((case, who), []).append(float(value))
    if case not in cases:
        cases.append(case)


def unit(case):
    for suffix, name in (("MiB_per_s", "MiB/s"), ("_per_s", "/s"), ("_per_op", "/op"), ("_us", "us")):
        if case.endswith(suffix):
            return name
    return "ns/op"


def cell(case, who):
    return "%12.1f" % statistics.median(runs[(case, who)]) if (case, who) in runs else "%12s" % "-"


print("%-32s %s  %s" % ("case (medians)", " ".join("%12s" % who for who in columns), "unit"))
for case in cases:
    print("%-32s %s  %s" % (case, " ".join(cell(case, who) for who in columns), unit(case)))
