/* limits: prints the limits the program started with, as getrlimit reports them: "nofile SOFT HARD". */
#include <stdio.h>
#include <sys/resource.h>

int main(void) {
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) != 0) {
    perror("getrlimit");
    return 1;
  }
  printf("nofile %llu %llu\n", (unsigned long long)nofile.rlim_cur, (unsigned long long)nofile.rlim_max);
  return 0;
}
