/* hello: the first program every Kiln test boots.
 *
 * Prints a fixed greeting, its argv and its whole environment to stdout, one line to stderr, and exits with the code
 * given as argv[1] (0 without one). The Rust guest `hello` prints exactly the same lines, so one assertion checks both.
 */
#include <stdio.h>
#include <stdlib.h>

extern char **environ;

int main(int argc, char **argv) {
  printf("hello from kiln\n");
  printf("argc=%d\n", argc);
  for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
  int n = 0;
  for (char **e = environ; *e; e++, n++) printf("env[%d]=%s\n", n, *e);
  printf("envc=%d\n", n);
  const char *greeting = getenv("KILN_GREETING");
  printf("KILN_GREETING=%s\n", greeting ? greeting : "(unset)");
  fflush(stdout);
  fprintf(stderr, "hello: this line goes to stderr\n");
  return argc > 1 ? atoi(argv[1]) : 0;
}
