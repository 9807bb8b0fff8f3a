/* volume.c: file syscalls on a mounted volume. "write ROOT" makes files and directories under ROOT (create, write,
 * pwrite, lseek, ftruncate, rename, unlink, rmdir, fsync, fdatasync); "read ROOT" (in the next instance) checks that
 * they are all there with their bytes. One "ok:"/"FAILED:" line per check; the exit code counts failures. "dsync ROOT"
 * writes three files through O_DSYNC, O_SYNC and pwritev2's RWF_DSYNC, never fsyncs, reports, and waits to be
 * killed: what it wrote must be on the host all the same. */
#define _GNU_SOURCE
#include "check.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef RWF_DSYNC
#define RWF_DSYNC 2
#endif

#define BIG (3 << 20)

static char path_buf[4][512];
static const char *at(int slot, const char *root, const char *rest) {
  snprintf(path_buf[slot], sizeof path_buf[slot], "%s/%s", root, rest);
  return path_buf[slot];
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 131 + (i >> 12)); }

static int write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static void do_write(const char *root) {
  check(mkdir(at(0, root, "dir"), 0755) == 0, "mkdir dir");
  check(mkdir(at(0, root, "dir"), 0755) == -1 && errno == EEXIST, "mkdir of an existing directory is EEXIST");
  check(mkdir(at(0, root, "dir/sub"), 0700) == 0, "mkdir dir/sub");

  int fd = open(at(0, root, "dir/hello.tmp"), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  check(fd >= 0, "create dir/hello.tmp");
  check(write_all(fd, "hello, volume\n", 14) == 0, "write 14 bytes");
  check(fsync(fd) == 0, "fsync");
  close(fd);
  check(rename(at(0, root, "dir/hello.tmp"), at(1, root, "dir/sub/hello.txt")) == 0, "rename into dir/sub");

  fd = open(at(0, root, "big.bin"), O_CREAT | O_RDWR, 0600);
  unsigned char *buf = malloc(BIG);
  for (size_t i = 0; i < BIG; i++) buf[i] = pattern(i);
  check(fd >= 0 && write_all(fd, buf, BIG) == 0, "write 3 MiB");
  check(pwrite(fd, "PWRITE", 6, 100000) == 6, "pwrite in the middle");
  check(lseek(fd, 0, SEEK_END) == BIG, "lseek to the end");
  check(write_all(fd, "END", 3) == 0, "append after lseek");
  check(fdatasync(fd) == 0, "fdatasync");
  close(fd);
  free(buf);

  fd = open(at(0, root, "short"), O_CREAT | O_RDWR, 0644);
  check(fd >= 0 && write_all(fd, "0123456789", 10) == 0 && ftruncate(fd, 4) == 0, "ftruncate to 4 bytes");
  close(fd);

  fd = open(at(0, root, "gone"), O_CREAT | O_WRONLY, 0644);
  close(fd);
  check(unlink(at(0, root, "gone")) == 0, "unlink");
  check(access(at(0, root, "gone"), F_OK) == -1 && errno == ENOENT, "an unlinked file is gone");
  check(mkdir(at(0, root, "empty"), 0755) == 0 && rmdir(at(0, root, "empty")) == 0, "mkdir then rmdir");
  check(rmdir(at(0, root, "dir")) == -1 && errno == ENOTEMPTY, "rmdir of a non-empty directory is ENOTEMPTY");
  check(rename(at(0, root, "short"), "/tmp/short") == -1 && errno == EXDEV, "rename off the volume is EXDEV");
  check(rmdir(root) == -1 && errno == EBUSY, "the mount point cannot be removed");
  struct stat through;
  check(stat(at(0, root, "short/x"), &through) == -1 && errno == ENOTDIR, "a path through a file is ENOTDIR");
  check(mkdir(at(0, root, "short/x"), 0755) == -1 && errno == ENOTDIR, "mkdir through a file is ENOTDIR");
  check(stat(at(0, root, "short/.."), &through) == -1 && errno == ENOTDIR, "short/.. is ENOTDIR");
  check(mkdir(root, 0755) == -1 && errno == EEXIST, "mkdir of the mount point is EEXIST");
  /* No fsync for this one: the program's end writes it back. */
  fd = open(at(0, root, "unsynced"), O_CREAT | O_WRONLY, 0644);
  check(fd >= 0 && write_all(fd, "written at exit\n", 16) == 0, "write without fsync");
  close(fd);
}

static int read_file(const char *path, char *out, size_t max) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, out, max);
  close(fd);
  return (int)n;
}

static void do_read(const char *root) {
  char small[64] = {0};
  check(read_file(at(0, root, "dir/sub/hello.txt"), small, sizeof small) == 14 &&
            memcmp(small, "hello, volume\n", 14) == 0,
        "dir/sub/hello.txt has its bytes");
  check(access(at(0, root, "dir/hello.tmp"), F_OK) == -1, "the old name is gone");

  struct stat st;
  check(stat(at(0, root, "big.bin"), &st) == 0 && st.st_size == BIG + 3 && S_ISREG(st.st_mode) &&
            (st.st_mode & 0777) == 0600,
        "big.bin: size and mode");
  int fd = open(at(0, root, "big.bin"), O_RDONLY);
  unsigned char *buf = malloc(BIG + 3);
  size_t got = 0;
  ssize_t n;
  while (fd >= 0 && (n = read(fd, buf + got, BIG + 3 - got)) > 0) got += (size_t)n;
  close(fd);
  int same = got == BIG + 3;
  for (size_t i = 0; same && i < BIG; i++) {
    unsigned char want = (i >= 100000 && i < 100006) ? (unsigned char)"PWRITE"[i - 100000] : pattern(i);
    same = buf[i] == want;
  }
  check(same && memcmp(buf + BIG, "END", 3) == 0, "big.bin: every byte");
  free(buf);

  check(read_file(at(0, root, "short"), small, sizeof small) == 4 && memcmp(small, "0123", 4) == 0,
        "short: truncated to 4 bytes");
  check(read_file(at(0, root, "unsynced"), small, sizeof small) == 16, "unsynced: written back at exit");

  DIR *d = opendir(root);
  int seen = 0;
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (strcmp(e->d_name, "dir") == 0 && e->d_type == DT_DIR) seen |= 1;
    if (strcmp(e->d_name, "big.bin") == 0 && e->d_type == DT_REG) seen |= 2;
    if (strcmp(e->d_name, "lost+found") == 0) seen |= 4;
    if (strcmp(e->d_name, "gone") == 0) seen |= 8;
  }
  if (d) closedir(d);
  check(seen == 7, "getdents64 lists dir, big.bin and lost+found, not gone");
  check(stat(at(0, root, "dir"), &st) == 0 && S_ISDIR(st.st_mode), "dir is a directory");
  check(chdir(at(0, root, "dir/sub")) == 0 && read_file("hello.txt", small, sizeof small) == 14,
        "chdir into the volume and open a relative path");
  struct statfs sfs;
  check(statfs(root, &sfs) == 0 && sfs.f_type == 0xEF53 && sfs.f_bsize == 4096 && sfs.f_blocks == (64 << 20) / 4096 &&
            sfs.f_bfree > 0 && sfs.f_bfree < sfs.f_blocks,
        "statfs on the volume: ext2, 64 MiB, partly used");
  check(statfs("/tmp", &sfs) == 0 && sfs.f_type == 0x01021994, "statfs off the volume: tmpfs");
}

static void do_dsync(const char *root) {
  int fd = open(at(0, root, "dsync"), O_CREAT | O_WRONLY | O_DSYNC, 0644);
  check(fd >= 0 && write_all(fd, "o_dsync\n", 8) == 0, "write with O_DSYNC");
  int sfd = open(at(0, root, "osync"), O_CREAT | O_WRONLY | O_SYNC, 0644);
  check(sfd >= 0 && pwrite(sfd, "o_sync\n", 7, 0) == 7, "pwrite with O_SYNC");
  check(sfd >= 0 && (fcntl(sfd, F_GETFL) & O_SYNC) == O_SYNC, "F_GETFL reports O_SYNC");
  int rfd = open(at(0, root, "rwf"), O_CREAT | O_WRONLY, 0644);
  struct iovec iov = {"rwf_dsync\n", 10};
  check(rfd >= 0 && syscall(SYS_pwritev2, rfd, &iov, 1, 0, 0, RWF_DSYNC) == 10, "pwritev2 with RWF_DSYNC");
  printf("%d failures\n", failures);
  fflush(stdout);
  for (;;) sleep(1);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: volume write|read|dsync ROOT\n");
    return 2;
  }
  if (strcmp(argv[1], "dsync") == 0) do_dsync(argv[2]);
  if (strcmp(argv[1], "write") == 0)
    do_write(argv[2]);
  else
    do_read(argv[2]);
  printf("%d failures\n", failures);
  return failures;
}
