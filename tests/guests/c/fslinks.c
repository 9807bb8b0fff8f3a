/* fslinks: symbolic links, hard links and FIFOs as Linux has them, in the new directory argv[1] (made in the working
 * directory: a temporary one natively, /tmp or a volume under Kiln), and /proc/self/task, /etc/services and
 * /etc/protocols. With "kiln" as argv[2], also what only Kiln answers this way (mknod of a device node is EPERM;
 * root on Linux may make one). Each check prints one line; exits 0 when all held. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "check.h"

static int fails_with(int ret, int err) { return ret == -1 && errno == err; }

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
  if (fd < 0) return -1;
  int ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
  return close(fd) == 0 && ok ? 0 : -1;
}

/* The file's contents (up to 63 bytes), or "" if it cannot be read. */
static const char *contents(const char *path) {
  static char buf[64];
  buf[0] = 0;
  int fd = open(path, O_RDONLY);
  if (fd < 0) return buf;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  buf[n > 0 ? n : 0] = 0;
  close(fd);
  return buf;
}

static int link_says(const char *path, const char *target) {
  char buf[PATH_MAX];
  ssize_t n = readlink(path, buf, sizeof buf);
  return n == (ssize_t)strlen(target) && memcmp(buf, target, n) == 0;
}

static int is_type(const char *path, mode_t type, int follow) {
  struct stat st;
  int r = follow ? stat(path, &st) : lstat(path, &st);
  return r == 0 && (st.st_mode & S_IFMT) == type;
}

static ino_t ino_of(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? st.st_ino : 0;
}

static unsigned char dirent_type(const char *dir, const char *name) {
  DIR *d = opendir(dir);
  struct dirent *e;
  unsigned char type = 255;
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, name) == 0) type = e->d_type;
  if (d) closedir(d);
  return type;
}

static void symlinks(void) {
  char buf[PATH_MAX];
  struct stat st;
  check(write_file("target", "hello") == 0, "write target");
  check(symlink("target", "l1") == 0, "symlink l1 -> target");
  check(link_says("l1", "target"), "readlink l1 is target, no NUL");
  check(readlink("l1", buf, 3) == 3 && memcmp(buf, "tar", 3) == 0, "readlink truncates to the buffer");
  check(strcmp(contents("l1"), "hello") == 0, "open follows the link");
  check(lstat("l1", &st) == 0 && S_ISLNK(st.st_mode) && st.st_size == 6, "lstat sees the link, its size the target's length");
  check(stat("l1", &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 5, "stat sees the target");
  check(fstatat(AT_FDCWD, "l1", &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode), "fstatat AT_SYMLINK_NOFOLLOW");
  check(fails_with(open("l1", O_RDONLY | O_NOFOLLOW), ELOOP), "O_NOFOLLOW on a link is ELOOP");
  check(fails_with(open("l1", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST), "O_CREAT|O_EXCL on a link is EEXIST");
  check(fails_with(symlink("x", "l1"), EEXIST), "symlink over a name is EEXIST");
  check(fails_with(symlink("x", "target"), EEXIST), "symlink over a file is EEXIST");
  check(dirent_type(".", "l1") == DT_LNK, "getdents says DT_LNK");

  check(symlink("missing", "dangling") == 0, "symlink to a missing name");
  check(fails_with(stat("dangling", &st), ENOENT), "stat of a dangling link is ENOENT");
  check(is_type("dangling", S_IFLNK, 0), "lstat of a dangling link");
  int fd = open("dangling", O_CREAT | O_WRONLY, 0644);
  check(fd >= 0 && write(fd, "made", 4) == 4 && close(fd) == 0, "O_CREAT through a dangling link");
  check(strcmp(contents("missing"), "made") == 0, "... makes its target");

  check(mkdir("d", 0755) == 0 && mkdir("d/sub", 0755) == 0, "mkdir d/sub");
  check(symlink("d/sub", "ls") == 0, "symlink ls -> d/sub");
  check(write_file("ls/inner", "in") == 0, "create through a link to a directory");
  check(strcmp(contents("d/sub/inner"), "in") == 0, "... lands in the target directory");
  check(ino_of("ls/..") == ino_of("d") && ino_of("d") != 0, "ls/.. is the target's parent, not the link's");
  check(is_type("ls/", S_IFDIR, 0), "lstat with a trailing slash follows");
  check(fails_with(rmdir("ls"), ENOTDIR), "rmdir of a link is ENOTDIR");
  check(symlink("../target", "d/up") == 0 && strcmp(contents("d/up"), "hello") == 0, "a relative target from its directory");
  check(symlink("sub/../../target", "d/up2") == 0 && strcmp(contents("d/up2"), "hello") == 0, "a target with ..");
  check(symlink("/dev/null", "lnull") == 0 && is_type("lnull", S_IFCHR, 1), "an absolute target");
  fd = open("lnull", O_WRONLY);
  check(fd >= 0 && write(fd, "x", 1) == 1 && close(fd) == 0, "open of a link to /dev/null");

  /* Longer than an ext2 inode keeps in itself: a "slow" link on a volume. */
  char long_target[256] = "";
  for (int i = 0; i < 40; i++) strcat(long_target, "./");
  strcat(long_target, "target");
  check(symlink(long_target, "long") == 0 && link_says("long", long_target) && strcmp(contents("long"), "hello") == 0,
        "a link with a long target");
  check(symlink("l1", "l2") == 0 && strcmp(contents("l2"), "hello") == 0, "a link to a link");
  check(symlink("loop2", "loop1") == 0 && symlink("loop1", "loop2") == 0, "a loop of links");
  check(fails_with(open("loop1", O_RDONLY), ELOOP), "open of a loop is ELOOP");
  check(fails_with(stat("loop1/x", &st), ELOOP), "a walk through a loop is ELOOP");
  /* chain0 -> chain1 -> ... -> chain40 -> target: 41 links from chain0, 40 from chain1 (Linux's limit). */
  char name[32], next[32];
  for (int i = 0; i <= 40; i++) {
    snprintf(name, sizeof name, "chain%d", i);
    snprintf(next, sizeof next, "chain%d", i + 1);
    if (symlink(i == 40 ? "target" : next, name) != 0) check(0, "make the chain");
  }
  check(strcmp(contents("chain1"), "hello") == 0, "40 links are followed");
  check(fails_with(open("chain0", O_RDONLY), ELOOP), "41 links are ELOOP");

  int dir = open("d", O_RDONLY | O_DIRECTORY);
  check(symlinkat("sub/inner", dir, "at") == 0, "symlinkat relative to a directory");
  check(readlinkat(dir, "at", buf, sizeof buf) == 9 && memcmp(buf, "sub/inner", 9) == 0, "readlinkat");
  check(strcmp(contents("d/at"), "in") == 0, "... resolves from that directory");
  close(dir);

  int here = open(".", O_RDONLY | O_DIRECTORY);
  char cwd[PATH_MAX];
  check(chdir("ls") == 0 && getcwd(cwd, sizeof cwd) && strlen(cwd) > 6 && strcmp(cwd + strlen(cwd) - 6, "/d/sub") == 0,
        "chdir through a link; getcwd names the target");
  check(strcmp(contents("inner"), "in") == 0, "relative paths from there");
  check(fchdir(here) == 0, "back");
  close(here);

  check(link("l2", "hl") == 0 && is_type("hl", S_IFLNK, 0), "link of a link links the link");
  check(linkat(AT_FDCWD, "l2", AT_FDCWD, "hf", AT_SYMLINK_FOLLOW) == 0 && is_type("hf", S_IFREG, 0),
        "linkat AT_SYMLINK_FOLLOW links the target");
  check(rename("l2", "l3") == 0 && link_says("l3", "l1"), "rename moves the link");
  check(unlink("l1") == 0 && is_type("target", S_IFREG, 0), "unlink removes the link, not the target");
  check(fails_with(stat("l3", &st), ENOENT), "a link to a removed link dangles");
}

static void hard_links(void) {
  struct stat a, b;
  check(write_file("h1", "abc") == 0, "write h1");
  check(link("h1", "h2") == 0, "link h1 h2");
  check(stat("h1", &a) == 0 && stat("h2", &b) == 0 && a.st_ino == b.st_ino && a.st_nlink == 2 && b.st_nlink == 2,
        "two names, one inode, st_nlink 2");
  int fd = open("h2", O_WRONLY | O_APPEND);
  check(fd >= 0 && write(fd, "d", 1) == 1 && close(fd) == 0 && strcmp(contents("h1"), "abcd") == 0,
        "a write through one name shows through the other");
  check(fails_with(link("h1", "h2"), EEXIST), "link onto a name is EEXIST");
  check(fails_with(link("d", "d2"), EPERM), "link of a directory is EPERM");
  check(fails_with(link("nothing", "n2"), ENOENT), "link of a missing name is ENOENT");
  check(rename("h1", "h2") == 0 && stat("h1", &a) == 0, "rename between two names of one file does nothing");
  check(unlink("h1") == 0 && stat("h2", &b) == 0 && b.st_nlink == 1 && strcmp(contents("h2"), "abcd") == 0,
        "unlink one name: the other keeps the data, st_nlink 1");
  check(mkdir("nd", 0755) == 0 && mkdir("nd/a", 0755) == 0 && mkdir("nd/b", 0755) == 0 && stat("nd", &a) == 0 &&
            a.st_nlink == 4,
        "a directory's st_nlink is 2 + its subdirectories");
  struct stat here_before, here_after;
  check(stat(".", &here_before) == 0 && rmdir("nd/b") == 0 && rename("nd/a", "moved") == 0 && stat("nd", &a) == 0 &&
            a.st_nlink == 2 && stat(".", &here_after) == 0 && here_after.st_nlink == here_before.st_nlink + 1,
        "rmdir and rename of a directory keep st_nlink");
  check(mkdir("nd/c", 0755) == 0 && rename("moved", "nd/c") == 0 && stat("nd", &a) == 0 && a.st_nlink == 3 &&
            stat(".", &here_after) == 0 && here_after.st_nlink == here_before.st_nlink,
        "a directory renamed over an empty one");
}

static void *fifo_writer(void *arg) {
  int fd = open((const char *)arg, O_WRONLY); /* blocks until the reader opens */
  if (fd >= 0) {
    (void)!write(fd, "ping", 4);
    close(fd);
  }
  return (void *)(long)(fd >= 0);
}

static void fifos(void) {
  struct stat st;
  char buf[8];
  check(mkfifo("ff", 0600) == 0, "mkfifo");
  check(stat("ff", &st) == 0 && S_ISFIFO(st.st_mode) && (st.st_mode & 0777) == 0600, "stat says S_IFIFO");
  check(dirent_type(".", "ff") == DT_FIFO, "getdents says DT_FIFO");
  check(fails_with(mkfifo("ff", 0600), EEXIST), "mkfifo over a name is EEXIST");
  check(fails_with(open("ff", O_WRONLY | O_NONBLOCK), ENXIO), "a non-blocking writer without a reader is ENXIO");
  int r = open("ff", O_RDONLY | O_NONBLOCK);
  check(r >= 0, "a non-blocking reader opens at once");
  check(read(r, buf, sizeof buf) == 0, "no writer yet: end of file");
  int w = open("ff", O_WRONLY | O_NONBLOCK);
  check(w >= 0 && write(w, "xy", 2) == 2, "then a writer opens and writes");
  check(read(r, buf, sizeof buf) == 2 && memcmp(buf, "xy", 2) == 0, "the reader reads it");
  check(close(w) == 0 && read(r, buf, sizeof buf) == 0, "end of file once the writer closed");
  close(r);

  pthread_t t;
  pthread_create(&t, NULL, fifo_writer, "ff");
  r = open("ff", O_RDONLY); /* blocks until the writer opens */
  check(r >= 0, "a blocking reader and a blocking writer meet");
  ssize_t n = 0, got;
  while (n < 4 && (got = read(r, buf + n, sizeof buf - n)) > 0) n += got;
  check(n == 4 && memcmp(buf, "ping", 4) == 0, "bytes pass between the threads");
  check(read(r, buf, sizeof buf) == 0, "end of file after the writer closed");
  void *opened;
  pthread_join(t, &opened);
  check(opened == (void *)1, "the writer opened");
  close(r);
  int rw = open("ff", O_RDWR);
  check(rw >= 0 && write(rw, "z", 1) == 1 && read(rw, buf, 1) == 1 && buf[0] == 'z', "O_RDWR is both ends");
  close(rw);
  check(mknod("fn", S_IFIFO | 0644, 0) == 0 && is_type("fn", S_IFIFO, 0), "mknod S_IFIFO");
  check(unlink("ff") == 0 && unlink("fn") == 0, "unlink the FIFOs");
}

static volatile int stop_spinning;
static pid_t second_tid;

static void *task_thread(void *arg) {
  (void)arg;
  second_tid = syscall(SYS_gettid);
  while (!stop_spinning) usleep(1000);
  return NULL;
}

static int lists_tid(pid_t tid) {
  char name[16];
  snprintf(name, sizeof name, "%d", tid);
  return dirent_type("/proc/self/task", name) == DT_DIR;
}

static void proc_task(void) {
  pthread_t t;
  pthread_create(&t, NULL, task_thread, NULL);
  while (!__atomic_load_n(&second_tid, __ATOMIC_SEQ_CST)) usleep(1000);
  pid_t main_tid = syscall(SYS_gettid);
  check(is_type("/proc/self/task", S_IFDIR, 1), "/proc/self/task is a directory");
  check(lists_tid(main_tid), "it lists the main thread");
  check(lists_tid(second_tid), "it lists a second thread");
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d", second_tid);
  check(is_type(path, S_IFDIR, 1), "/proc/self/task/TID is a directory");
  /* Its comm: the thread's name and a newline; a new thread has its creator's, the program's file name at first. */
  char comm[64], name[17] = "";
  prctl(PR_GET_NAME, name);
  snprintf(path, sizeof path, "/proc/self/task/%d/comm", second_tid);
  snprintf(comm, sizeof comm, "%s\n", name);
  check(strcmp(contents(path), comm) == 0 && strncmp(name, "fslinks", 7) == 0, "/proc/self/task/TID/comm");
  stop_spinning = 1;
  pthread_join(t, NULL);
}

/* Whether `file` has a line whose first two words are `name` and `value`. */
static int has_entry(const char *file, const char *name, const char *value) {
  FILE *f = fopen(file, "r");
  char line[256], a[64], b[64];
  int found = 0;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "%63s %63s", a, b) == 2 && strcmp(a, name) == 0 && strcmp(b, value) == 0) found = 1;
  if (f) fclose(f);
  return found;
}

static void etc_files(void) {
  check(has_entry("/etc/services", "http", "80/tcp"), "/etc/services names http 80/tcp");
  check(has_entry("/etc/services", "domain", "53/udp"), "/etc/services names domain 53/udp");
  check(has_entry("/etc/protocols", "tcp", "6"), "/etc/protocols names tcp 6");
  check(has_entry("/etc/protocols", "ipv6-icmp", "58"), "/etc/protocols names ipv6-icmp 58");
}

static void kiln_only(void) {
  check(fails_with(mknod("cdev", S_IFCHR | 0600, makedev(1, 3)), EPERM), "mknod of a character device is EPERM");
  check(fails_with(mknod("bdev", S_IFBLK | 0600, makedev(8, 0)), EPERM), "mknod of a block device is EPERM");
}

/* `fslinks --image DIR`: DIR holds file.txt ("hello"), link -> file.txt, lib -> sub, sub/x.txt and dangling ->
 * /nowhere, copied into the root filesystem by `kiln run --dir`: the links must be links. */
static int image_links(const char *dir) {
  if (chdir(dir) != 0) return 2;
  check(is_type("link", S_IFLNK, 0) && link_says("link", "file.txt"), "a host link is a link in the root filesystem");
  check(strcmp(contents("link"), "hello") == 0, "... and reaches its target");
  check(is_type("lib", S_IFLNK, 0) && strcmp(contents("lib/x.txt"), "x") == 0, "a link to a directory");
  check(is_type("dangling", S_IFLNK, 0) && link_says("dangling", "/nowhere"), "a dangling link stays as it is");
  printf(failures ? "fslinks: %d FAILED\n" : "fslinks: ok\n", failures);
  return failures != 0;
}

/* `fslinks --pwd FILE`: where the program started (getcwd) and the first line of FILE, a path relative to it. */
static int pwd(const char *file) {
  char cwd[PATH_MAX];
  printf("cwd: %s\n", getcwd(cwd, sizeof cwd) ? cwd : strerror(errno));
  printf("read: %s\n", contents(file));
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--image") == 0) return image_links(argv[2]);
  if (argc == 3 && strcmp(argv[1], "--pwd") == 0) return pwd(argv[2]);
  if (argc < 2 || mkdir(argv[1], 0755) != 0 || chdir(argv[1]) != 0) {
    perror("fslinks: make and enter the work directory");
    return 2;
  }
  symlinks();
  hard_links();
  fifos();
  proc_task();
  etc_files();
  if (argc > 2 && strcmp(argv[2], "kiln") == 0) kiln_only();
  printf(failures ? "fslinks: %d FAILED\n" : "fslinks: ok\n", failures);
  return failures != 0;
}
