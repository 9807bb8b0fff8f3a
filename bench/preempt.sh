#!/usr/bin/env bash
# Threads that compute without syscalls (bench/preempt.c), natively and in Kiln, alternating, N rounds (default 5):
#  - signal latency: pthread_kill to a spinning thread until its handler runs (300 signals a run; median, p99, max),
#    the target on its own CPU (native, kiln --cpus 2) and sharing one (native under taskset -c 0, kiln --cpus 1);
#  - time slicing: the same CPU-bound work split among as many threads as CPUs, then among four times as many, wall
#    and CPU time (the process's user + system time, which the host's other load changes far less than wall time),
#    and, in Kiln, the VM exits (`kiln run --stats`) the extra threads cost.
# Aims (issue 13): a spinning thread sees a signal within 10 ms; time slicing costs < 1% of throughput.
#
#   bench/preempt.sh [N]
#   CHRT=1 bench/preempt.sh [N]     the time-slicing runs under `chrt -f 10` (root): on a loaded host the CPU cost
#                                    of a few exits per second is otherwise below the run-to-run noise. (Not the
#                                    latency runs: a real-time spinning thread may keep its sender off the CPU.)
set -euo pipefail
rounds=${1:-5}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
musl-gcc -static -O2 -Wall -Werror -o "$out/preempt" "$repo/bench/preempt.c" -lpthread

echo "host: $(uname -r), $(nproc) CPUs; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "${CHRT:-}" = 1 ] && echo "time-slicing runs under chrt -f 10"
KILN="$KILN" PREEMPT="$out/preempt" ROUNDS="$rounds" python3 - <<'EOF'
import os, re, resource, statistics, subprocess

kiln, preempt, rounds = os.environ["KILN"], os.environ["PREEMPT"], int(os.environ["ROUNDS"])
fifo = ["chrt", "-f", "10"] if os.environ.get("CHRT") == "1" else []
# (who, command prefix, CPUs)
who = [
    ("native", [], 2),
    ("native 1 CPU", ["taskset", "-c", "0"], 1),
    ("kiln --cpus 2", [kiln, "run", "--stats", "--cpus", "2"], 2),
    ("kiln --cpus 1", [kiln, "run", "--stats", "--cpus", "1"], 1),
]
MILLION_STEPS = 600


def run(prefix, args):
    """stdout, stderr and the CPU seconds (user + system) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(prefix + [preempt] + args, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return p.stdout, p.stderr, cpu


def exits(stderr):
    m = re.search(r"(\d+) VM exits", stderr)
    return int(m.group(1)) if m else None


lat, work = {}, {}
for _ in range(rounds):
    for name, prefix, cpus in who:
        out, _, _ = run(prefix, ["latency", "300"])
        lat.setdefault(name, []).append([float(x) for x in out.split()[1:4]])
        for label, threads in (("few", cpus), ("many", 4 * cpus)):
            out, err, cpu = run(fifo + prefix, ["work", str(threads), str(MILLION_STEPS)])
            work.setdefault((name, label), []).append((float(out.split()[1]), cpu, exits(err)))

med = statistics.median
print("\nSignal to a spinning thread: pthread_kill until the handler runs (us; medians over %d runs of 300)" % rounds)
print("%-16s %10s %10s %10s" % ("", "median", "p99", "max"))
for name, _, _ in who:
    print("%-16s %10.1f %10.1f %10.1f" % ((name,) + tuple(med(r[i] for r in lat[name]) for i in range(3))))

print("\nTime slicing: %d million steps on as many threads as CPUs (few) and four times as many (many); medians" % MILLION_STEPS)
print("%-16s %9s %9s %9s %9s %8s %8s %11s %11s" % ("", "wall few", "wall many", "cpu few", "cpu many", "exits", "exits", "wall cost", "cpu cost"))
print("%-16s %9s %9s %9s %9s %8s %8s %11s %11s" % ("", "s", "s", "s", "s", "few", "many", "%", "%"))
for name, _, _ in who:
    few, many = work[(name, "few")], work[(name, "many")]
    w = [med(r[0] for r in runs) for runs in (few, many)]
    c = [med(r[1] for r in runs) for runs in (few, many)]
    e = [med(r[2] for r in runs) if runs[0][2] is not None else float("nan") for runs in (few, many)]
    # The cost of each round's many against the same round's few, then the median: the host's load drifts slowly.
    wcost = med(100 * (m[0] / f[0] - 1) for f, m in zip(few, many))
    ccost = med(100 * (m[1] / f[1] - 1) for f, m in zip(few, many))
    print("%-16s %9.3f %9.3f %9.3f %9.3f %8.0f %8.0f %+11.2f %+11.2f" % (name, w[0], w[1], c[0], c[1], e[0], e[1], wcost, ccost))
EOF
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
