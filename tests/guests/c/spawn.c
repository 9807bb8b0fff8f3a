/* spawn: a program that tries to start other processes, which Kiln refuses (one program per VM): fork, vfork,
 * execve, posix_spawn and system each fail with ENOSYS ("Function not implemented"), and the program goes on. Prints
 * what each gave; exits 0 if every one failed cleanly. */
#define _GNU_SOURCE
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

static int refused(const char *what, long ret, int err) {
  printf("%s: %ld (%s)\n", what, ret, strerror(err));
  return ret != 0 && err == ENOSYS;
}

int main(void) {
  char *argv[] = {"/bin/true", 0};
  volatile int ok = 1;
  errno = 0;
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  ok &= refused("fork", pid, errno);
  errno = 0;
  pid = vfork();
  if (pid == 0) _exit(0);
  ok &= refused("vfork", pid, errno);
  errno = 0;
  long r = execve(argv[0], argv, environ);
  ok &= refused("execve", r, errno);
  int e = posix_spawn(&pid, argv[0], 0, 0, argv, environ);
  ok &= refused("posix_spawn", e, e);
  /* musl answers -1 with errno; glibc a shell that "exited 127". Either way no shell ran. */
  int status = system("true");
  printf("system: %s\n", status == 0 ? "a shell ran" : "no shell ran");
  ok &= status != 0;
  printf("spawn: %s\n", ok ? "every attempt was refused" : "something started");
  return !ok;
}
