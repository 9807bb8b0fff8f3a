/* fsync.c: fsync'd 4 KiB writes. "fsync PATH COUNT": appends COUNT blocks of 4 KiB to a new file at PATH, each
 * followed by fsync, then overwrites its first block COUNT times, each followed by fdatasync; prints each case's
 * operations per second. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: fsync PATH COUNT\n");
    return 2;
  }
  int count = atoi(argv[2]);
  int fd = open(argv[1], O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) {
    perror(argv[1]);
    return 1;
  }
  char block[4096];
  memset(block, 'k', sizeof block);
  double start = now();
  for (int i = 0; i < count; i++) {
    if (write(fd, block, sizeof block) != (ssize_t)sizeof block || fsync(fd) != 0) {
      perror("append + fsync");
      return 1;
    }
  }
  double appended = now();
  for (int i = 0; i < count; i++) {
    if (pwrite(fd, block, sizeof block, 0) != (ssize_t)sizeof block || fdatasync(fd) != 0) {
      perror("overwrite + fdatasync");
      return 1;
    }
  }
  double overwritten = now();
  printf("append_4k_fsync_per_s %.1f\n", count / (appended - start));
  printf("overwrite_4k_fdatasync_per_s %.1f\n", count / (overwritten - appended));
  close(fd);
  unlink(argv[1]);
  return 0;
}
