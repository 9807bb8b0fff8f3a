/* volsnap PATH: appends "before" to PATH (on a volume) and fsyncs it, says "volsnap: ready" and waits for SIGTERM;
 * then appends "after", fsyncs, and prints what PATH holds. A snapshot taken while it waits, restored, and stopped
 * shows the volume went on from where the snapshot left it. Exit code 0 unless a call failed. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_stop(int sig) { stop = sig; }

static int append(const char *path, const char *line) {
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return -1;
  size_t len = strlen(line);
  int ok = write(fd, line, len) == (ssize_t)len && fsync(fd) == 0;
  close(fd);
  return ok ? 0 : -1;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: volsnap PATH\n");
    return 2;
  }
  signal(SIGTERM, on_stop);
  if (append(argv[1], "before\n") != 0) {
    perror("volsnap: append before");
    return 1;
  }
  printf("volsnap: ready\n");
  fflush(stdout);
  while (!stop) pause();
  if (append(argv[1], "after\n") != 0) {
    perror("volsnap: append after");
    return 1;
  }
  int fd = open(argv[1], O_RDONLY);
  char buf[4096];
  ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
  if (n < 0) {
    perror("volsnap: read back");
    return 1;
  }
  buf[n] = 0;
  printf("volsnap: %s holds:\n%s", argv[1], buf);
  return 0;
}
