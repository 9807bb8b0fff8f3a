/* enosys: a syscall the system does not implement must fail with -ENOSYS, and the program must carry on.
 *
 * Always checks syscall number 999 (unassigned on Linux, so this holds natively too). With the argument `--kiln` it also
 * checks io_uring_setup, a real syscall the Kiln library OS does not implement (natively it may well exist). Prints
 * `enosys: ok` and exits 0 when every check held, else names the failing one and exits 1.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif

static int expect_enosys(const char *what, long nr) {
  errno = 0;
  long r = syscall(nr, 0, 0, 0, 0, 0, 0);
  int e = errno;
  if (r == -1 && e == ENOSYS) {
    printf("enosys: %s (%ld) -> ENOSYS\n", what, nr);
    return 0;
  }
  printf("enosys: %s (%ld) -> returned %ld, errno %d (%s); expected -1 with ENOSYS\n", what, nr, r, e, strerror(e));
  return 1;
}

int main(int argc, char **argv) {
  int failed = expect_enosys("syscall 999", 999);
  if (argc > 1 && strcmp(argv[1], "--kiln") == 0) failed |= expect_enosys("io_uring_setup", SYS_io_uring_setup);
  /* The program still works after the failed calls. */
  printf("enosys: %s\n", failed ? "FAILED" : "ok");
  return failed;
}
