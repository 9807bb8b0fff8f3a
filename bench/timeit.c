/* timeit: times whole processes, alternating between commands so that they share the machine's state fairly.
 *
 *   timeit N NAME=COMMAND...      e.g.  timeit 30 "kiln=kiln run ./hello" "native=./hello" "floor=./floor"
 *
 * Each COMMAND is split at spaces (no quoting) and started with posix_spawn, stdout and stderr to /dev/null. One
 * untimed warm-up round, then N rounds; each round runs every command once, starting with a different one each round.
 * A command that exits non-zero stops the benchmark. Prints one row per command: median, min and 90th percentile wall
 * time in milliseconds, and the median's ratio to the commands named `floor` and `native` when present.
 */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct command {
  const char *name;
  char **argv;
  double *ms;
};

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static char **split(char *s) {
  size_t n = 0, cap = 8;
  char **argv = malloc(cap * sizeof *argv);
  for (char *tok = strtok(s, " "); tok; tok = strtok(NULL, " ")) {
    if (n + 2 > cap) argv = realloc(argv, (cap *= 2) * sizeof *argv);
    argv[n++] = tok;
  }
  argv[n] = NULL;
  return argv;
}

static double run_once(const struct command *c) {
  posix_spawn_file_actions_t io;
  posix_spawn_file_actions_init(&io);
  posix_spawn_file_actions_addopen(&io, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&io, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  double t0 = now_ms();
  int err = posix_spawnp(&pid, c->argv[0], &io, NULL, c->argv, environ);
  if (err != 0) {
    fprintf(stderr, "timeit: cannot start %s (%s): %s\n", c->name, c->argv[0], strerror(err));
    exit(2);
  }
  int status;
  waitpid(pid, &status, 0);
  double t1 = now_ms();
  posix_spawn_file_actions_destroy(&io);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "timeit: %s failed (wait status %#x); run it by hand to see why\n", c->name, status);
    exit(2);
  }
  return t1 - t0;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: timeit N NAME=COMMAND...\n");
    return 2;
  }
  int n = atoi(argv[1]);
  int k = argc - 2;
  if (n < 1) n = 1;
  struct command *cmds = calloc((size_t)k, sizeof *cmds);
  for (int i = 0; i < k; i++) {
    char *eq = strchr(argv[i + 2], '=');
    if (!eq) {
      fprintf(stderr, "timeit: expected NAME=COMMAND, got %s\n", argv[i + 2]);
      return 2;
    }
    *eq = 0;
    cmds[i].name = argv[i + 2];
    cmds[i].argv = split(eq + 1);
    cmds[i].ms = calloc((size_t)n, sizeof(double));
  }
  for (int i = 0; i < k; i++) run_once(&cmds[i]); /* warm-up: page cache, first-touch costs */
  for (int r = 0; r < n; r++)
    for (int j = 0; j < k; j++) {
      struct command *c = &cmds[(r + j) % k];
      c->ms[r] = run_once(c);
    }

  double floor_ms = 0, native_ms = 0;
  for (int i = 0; i < k; i++) {
    qsort(cmds[i].ms, (size_t)n, sizeof(double), by_value);
    double median = n % 2 ? cmds[i].ms[n / 2] : (cmds[i].ms[n / 2 - 1] + cmds[i].ms[n / 2]) / 2;
    if (!strcmp(cmds[i].name, "floor")) floor_ms = median;
    if (!strcmp(cmds[i].name, "native")) native_ms = median;
  }
  printf("%-10s %10s %10s %10s %10s %10s\n", "case", "median ms", "min ms", "p90 ms", "x floor", "x native");
  for (int i = 0; i < k; i++) {
    double *ms = cmds[i].ms;
    double median = n % 2 ? ms[n / 2] : (ms[n / 2 - 1] + ms[n / 2]) / 2;
    printf("%-10s %10.3f %10.3f %10.3f", cmds[i].name, median, ms[0], ms[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1]);
    if (floor_ms > 0) printf(" %10.2f", median / floor_ms); else printf(" %10s", "-");
    if (native_ms > 0) printf(" %10.2f", median / native_ms); else printf(" %10s", "-");
    printf("\n");
  }
  printf("(%d rounds, alternating, after one warm-up round)\n", n);
  return 0;
}
