/* files: the in-memory filesystem through libc: create, write, append, read back, stat, lseek, pread, ftruncate,
 * chdir/getcwd, rename, O_EXCL, readdir, rmdir/unlink errors, /etc/hosts. With an argument, also the files kiln put in
 * from the host (--dir HOST:/srv/data): /srv/data/hello.txt holds "from the host" and can be changed in the guest.
 * Each check prints one line; exits 0 when all held. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
static int failures;
static void check(int ok, const char *what) { printf("%s: %s\n", ok ? "ok" : "FAILED", what); if (!ok) failures++; }
int main(int argc, char **argv) {
  (void)argv;
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
  }
  printf("files: %s\n", failures ? "FAILED" : "ok");
  return failures != 0;
}
