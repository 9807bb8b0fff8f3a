/* fsyncer: the crash-consistency writer. Appends numbered records to DIR/log, each followed by fsync, and prints
 * "ack N" once fsync returned; every 8th record it also creates DIR/files/r-N (fsync'd, with its directory) and
 * replaces DIR/state through a rename of a fsync'd temporary file, printing "file N" and "state N". It carries on
 * from the last record in the log, so that it can be killed and started again forever; the test checks that every
 * acknowledged record, file and state survived. Each acknowledgement is one write(2), so none is half-printed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The record numbered n: "rec NNNNNNNN " and a filler of a length that varies with n, then a newline. */
static int record(unsigned n, char *out) {
  int len = sprintf(out, "rec %08u ", n);
  int fill = 20 + (int)((n * 37u) % 300u);
  for (int i = 0; i < fill; i++) out[len++] = (char)('a' + (n + (unsigned)i) % 26);
  out[len++] = '\n';
  return len;
}

static void die(const char *what) {
  fprintf(stderr, "fsyncer: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void say(const char *what, unsigned n) {
  char line[64];
  int len = sprintf(line, "%s %u\n", what, n);
  if (write(1, line, (size_t)len) != len) exit(1);
}

static void sync_dir(const char *path) {
  int fd = open(path, O_RDONLY | O_DIRECTORY);
  if (fd < 0 || fsync(fd) != 0) die(path);
  close(fd);
}

/* The number after the last complete record in the log (1 for an empty one). */
static unsigned next_record(const char *log) {
  int fd = open(log, O_RDONLY);
  if (fd < 0) return 1;
  struct stat st;
  if (fstat(fd, &st) != 0) die("fstat");
  char *all = malloc((size_t)st.st_size + 1);
  ssize_t got = 0, n;
  while (got < st.st_size && (n = read(fd, all + got, (size_t)(st.st_size - got))) > 0) got += n;
  close(fd);
  all[got] = 0;
  unsigned last = 0;
  char *line = all;
  while (line < all + got) {
    char *end = strchr(line, '\n');
    if (!end) break;
    unsigned n_rec;
    if (sscanf(line, "rec %8u ", &n_rec) == 1) last = n_rec;
    line = end + 1;
  }
  free(all);
  return last + 1;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: fsyncer DIR\n");
    return 2;
  }
  char log[256], files[256], state[256], state_tmp[256], path[300];
  snprintf(log, sizeof log, "%s/log", argv[1]);
  snprintf(files, sizeof files, "%s/files", argv[1]);
  snprintf(state, sizeof state, "%s/state", argv[1]);
  snprintf(state_tmp, sizeof state_tmp, "%s/state.tmp", argv[1]);
  if (mkdir(files, 0755) != 0 && errno != EEXIST) die("mkdir files");
  int fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644);
  if (fd < 0) die("open log");
  char buf[512];
  for (unsigned n = next_record(log);; n++) {
    int len = record(n, buf);
    if (write(fd, buf, (size_t)len) != len) die("write log");
    if (fsync(fd) != 0) die("fsync log");
    say("ack", n);
    if (n % 8 != 0) continue;

    snprintf(path, sizeof path, "%s/r-%u", files, n);
    int f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f < 0 || write(f, buf, (size_t)len) != len || fsync(f) != 0) die("file");
    close(f);
    sync_dir(files);
    say("file", n);

    int t = open(state_tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    len = sprintf(buf, "state %u\n", n);
    if (t < 0 || write(t, buf, (size_t)len) != len || fsync(t) != 0) die("state.tmp");
    close(t);
    if (rename(state_tmp, state) != 0) die("rename state");
    sync_dir(argv[1]);
    say("state", n);
  }
}
