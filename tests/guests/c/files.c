/* files: the in-memory filesystem through libc: create, write, append, read back, stat, lseek, pread, ftruncate,
 * chdir/getcwd, rename, O_EXCL, readdir, rmdir/unlink errors, /etc/hosts. With an argument, also the files kiln put in
 * from the host (--dir HOST:/srv/data): /srv/data/hello.txt holds "from the host" and can be changed in the guest.
 * Also preadv/pwritev (and the *v2 forms), /proc/self/maps (the stack, a fresh mapping and the heap are where it says), mmap of files: private copies (zeros past the end), offsets, /dev/zero, and the errors Linux gives.
 * Each check prints one line; exits 0 when all held. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include "check.h"
static void mappings(void) {
  char pattern[5000];
  for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (char)(i * 7 + i / 251);
  int fd = open("/tmp/mapped.bin", O_CREAT | O_RDWR | O_TRUNC, 0644);
  check(fd >= 0 && write(fd, pattern, sizeof pattern) == (ssize_t)sizeof pattern, "write a file to map");
  close(fd);
  fd = open("/tmp/mapped.bin", O_RDONLY);
  unsigned char *p = mmap(NULL, 8192, PROT_READ, MAP_PRIVATE, fd, 0);
  int zeros = p != MAP_FAILED;
  for (int i = 5000; zeros && i < 8192; i++) zeros = p[i] == 0;
  check(p != MAP_FAILED && memcmp(p, pattern, sizeof pattern) == 0 && zeros, "mmap a file: its bytes, then zeros");
  unsigned char *q = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 4096);
  check(q != MAP_FAILED && memcmp(q, pattern + 4096, 5000 - 4096) == 0 && q[5000 - 4096] == 0, "mmap at an offset");
  check(munmap(p, 8192) == 0 && munmap(q, 4096) == 0, "munmap file mappings");
  p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  char back = 0;
  check(p != MAP_FAILED && (p[0] = 'X', pread(fd, &back, 1, 0) == 1) && back == pattern[0] && p[1] == (unsigned char)pattern[1],
        "a private mapping's writes stay private");
  errno = 0;
  check(mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EACCES,
        "shared writable mapping of a read-only descriptor is EACCES");
  errno = 0;
  check(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 100) == MAP_FAILED && errno == EINVAL, "unaligned offset is EINVAL");
  close(fd);
  fd = open("/tmp/mapped.bin", O_WRONLY);
  errno = 0;
  check(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED && errno == EACCES, "write-only descriptor is EACCES");
  close(fd);
  int pipefd[2];
  errno = 0;
  check(pipe(pipefd) == 0 && mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, pipefd[0], 0) == MAP_FAILED && errno == ENODEV,
        "mmap of a pipe is ENODEV");
  close(pipefd[0]);
  close(pipefd[1]);
  fd = open("/dev/zero", O_RDWR);
  p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  check(p != MAP_FAILED && p[0] == 0 && p[4095] == 0 && (p[10] = 1) == 1, "mmap of /dev/zero");
  close(fd);
  errno = 0;
  check(mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 99, 0) == MAP_FAILED && errno == EBADF, "mmap of a closed descriptor is EBADF");
}

/* Whether /proc/self/maps has a line covering `addr` with permissions starting `perms` and (if given) this name. */
static int listed(const void *addr, const char *perms, const char *name) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[256];
  int found = 0;
  while (f && !found && fgets(line, sizeof line, f)) {
    unsigned long start, end;
    char p[5];
    if (sscanf(line, "%lx-%lx %4s", &start, &end, p) != 3) return 0;
    found = (unsigned long)addr >= start && (unsigned long)addr < end && strncmp(p, perms, strlen(perms)) == 0 &&
            (!name || strstr(line, name));
  }
  if (f) fclose(f);
  return found;
}

static void proc_maps(void) {
  int local = 0;
  check(listed(&local, "rw", "[stack]"), "/proc/self/maps: the stack");
  void *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  check(m != MAP_FAILED && listed((char *)m + 4096, "rw", NULL), "/proc/self/maps: a fresh mapping");
  munmap(m, 1 << 20);
  /* musl's sbrk only reports the break; move it with the syscall. */
  char *top = (char *)syscall(SYS_brk, 0);
  check((char *)syscall(SYS_brk, top + 8192) == top + 8192 && listed(top + 4096, "rw", "[heap]"), "/proc/self/maps: the heap");
  check(listed((const void *)proc_maps, "r", NULL), "/proc/self/maps: the program's code");
}

static void vectors(void) {
  int fd = open("/tmp/vectors.txt", O_CREAT | O_RDWR | O_TRUNC, 0644);
  char a[4] = "abcd", b[3] = "efg", x[3], y[4];
  struct iovec out[2] = {{a, 4}, {b, 3}}, in[2] = {{x, 3}, {y, 4}};
  check(fd >= 0 && pwritev(fd, out, 2, 10) == 7 && lseek(fd, 0, SEEK_CUR) == 0, "pwritev at an offset");
  check(preadv(fd, in, 2, 10) == 7 && memcmp(x, "abc", 3) == 0 && memcmp(y, "defg", 4) == 0, "preadv at an offset");
  check(preadv(fd, in, 2, 15) == 2 && memcmp(x, "fg", 2) == 0, "preadv stops at the end of the file");
  check(lseek(fd, 12, SEEK_SET) == 12 && syscall(SYS_preadv2, fd, in, 1, -1L, 0L, 0) == 3 && memcmp(x, "cde", 3) == 0 &&
            lseek(fd, 0, SEEK_CUR) == 15,
        "preadv2 at offset -1 reads at and moves the file's offset");
  errno = 0;
  check(syscall(SYS_preadv2, fd, in, 1, 0L, 0L, 0x10000) == -1 && errno == EOPNOTSUPP,
        "preadv2 with an unknown flag is EOPNOTSUPP");
  struct stat st;
  check(syscall(SYS_pwritev2, fd, out, 1, 0L, 0L, 0x10 /* RWF_APPEND */) == 4 && fstat(fd, &st) == 0 && st.st_size == 21,
        "pwritev2 with RWF_APPEND appends");
  close(fd);
  int pipefd[2];
  errno = 0;
  check(pipe(pipefd) == 0 && preadv(pipefd[0], in, 1, 0) == -1 && errno == ESPIPE, "preadv of a pipe is ESPIPE");
  close(pipefd[0]);
  close(pipefd[1]);
}

static void filesystem_sizes(void) {
  struct statfs fs, by_fd;
  int fd = open("/tmp", O_RDONLY | O_DIRECTORY);
  check(statfs("/tmp", &fs) == 0 && fs.f_bsize > 0 && fs.f_blocks > 0 && fs.f_bavail <= fs.f_blocks &&
            fstatfs(fd, &by_fd) == 0 && by_fd.f_blocks == fs.f_blocks && by_fd.f_namelen == fs.f_namelen,
        "statfs and fstatfs");
  close(fd);
  errno = 0;
  check(statfs("/no/such/dir", &fs) == -1 && errno == ENOENT, "statfs of a missing path is ENOENT");
}

int main(int argc, char **argv) {
  (void)argv;
  filesystem_sizes();
  vectors();
  proc_maps();
  mappings();
  check(mkdir("/tmp/work", 0755) == 0, "mkdir");
  check(mkdir("/tmp/work", 0755) == -1 && errno == EEXIST, "mkdir twice is EEXIST");
  int fd = open("/tmp/work/a.txt", O_CREAT | O_WRONLY | O_TRUNC, 0644);
  check(fd >= 0 && write(fd, "hello ", 6) == 6 && write(fd, "world\n", 6) == 6, "create and write");
  close(fd);
  FILE *f = fopen("/tmp/work/a.txt", "r");
  char line[64] = {0};
  check(f && fgets(line, sizeof line, f) && strcmp(line, "hello world\n") == 0, "read back with stdio");
  fclose(f);
  struct stat st;
  check(stat("/tmp/work/a.txt", &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 12, "stat");
  fd = open("/tmp/work/a.txt", O_RDWR | O_APPEND);
  write(fd, "more\n", 5);
  check(lseek(fd, 0, SEEK_END) == 17 && pread(fd, line, 5, 6) == 5 && memcmp(line, "world", 5) == 0, "append, lseek, pread");
  check(ftruncate(fd, 5) == 0 && fstat(fd, &st) == 0 && st.st_size == 5, "ftruncate");
  close(fd);
  check(chdir("/tmp/work") == 0 && getcwd(line, sizeof line) && strcmp(line, "/tmp/work") == 0, "chdir and getcwd");
  check(rename("a.txt", "b.txt") == 0 && access("/tmp/work/b.txt", F_OK) == 0 && access("a.txt", F_OK) == -1, "rename relative");
  check(open("/tmp/work/b.txt", O_CREAT | O_EXCL | O_WRONLY, 0644) == -1 && errno == EEXIST, "O_EXCL");
  mkdir("sub", 0700);
  DIR *d = opendir("/tmp/work");
  int seen = 0; struct dirent *e;
  while (d && (e = readdir(d))) seen += !strcmp(e->d_name, "b.txt") + !strcmp(e->d_name, "sub") * 10;
  check(d && seen == 11, "readdir lists the entries");
  closedir(d);
  check(rmdir("/tmp/work") == -1 && errno == ENOTEMPTY, "rmdir a full directory is ENOTEMPTY");
  check(unlink("b.txt") == 0 && rmdir("sub") == 0 && chdir("/") == 0 && rmdir("/tmp/work") == 0, "unlink and rmdir");
  check(open("/nope/x", O_RDONLY) == -1 && errno == ENOENT, "missing parent is ENOENT");
  f = fopen("/etc/hosts", "r");
  check(f && fgets(line, sizeof line, f) && strstr(line, "localhost"), "/etc/hosts");
  if (argc > 1) {
    f = fopen("/srv/data/hello.txt", "r");
    check(f && fgets(line, sizeof line, f) && strcmp(line, "from the host\n") == 0, "a file from the host");
    if (f) fclose(f);
    f = fopen("/srv/data/sub/deep.txt", "r");
    check(f && fgets(line, sizeof line, f) && strcmp(line, "deep\n") == 0, "a file below a host directory");
    if (f) fclose(f);
    fd = open("/srv/data/hello.txt", O_WRONLY | O_APPEND);
    check(fd >= 0 && write(fd, "changed\n", 8) == 8 && close(fd) == 0, "a host file can be changed in the guest");
    check(stat("/srv/data/hello.txt", &st) == 0 && st.st_size == 22, "the change shows");
    fd = open("/srv/data/hello.txt", O_RDONLY);
    char *m = mmap(NULL, 22, PROT_READ, MAP_PRIVATE, fd, 0);
    check(m != MAP_FAILED && memcmp(m, "from the host\nchanged\n", 22) == 0, "mmap a host file");
    close(fd);
  }
  printf("files: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
