"""Reads "WHO CASE VALUE" lines (WHO: native, kiln1, kiln2) and prints each case's medians side by side, in the order
the cases first appear. The unit is the case name's last word when it is one (us, MiB_per_s), else ns/op."""
import statistics
import sys

runs = {}
cases = []
for line in sys.stdin:
    who, case, value = line.split()
    runs.setdefault((case, who), []).append(float(value))
    if case not in cases:
        cases.append(case)
print("%-28s %12s %12s %12s  %s" % ("case", "native", "kiln 1 vCPU", "kiln 2 vCPUs", "unit"))
for case in cases:
    medians = [statistics.median(runs[(case, who)]) for who in ("native", "kiln1", "kiln2")]
    unit = "MiB/s" if case.endswith("MiB_per_s") else "us" if case.endswith("_us") else "ns/op"
    print("%-28s %12.1f %12.1f %12.1f  %s" % (case, *medians, unit))
