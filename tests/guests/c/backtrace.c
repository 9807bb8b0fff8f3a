/* backtrace: crashes three calls deep (main -> handle_request -> parse_header) reading address 0x8, for the crash
 * report's backtrace. The harness builds it with DWARF and frame pointers, with symbols only and no frame pointers
 * (unwound by .eh_frame), and stripped. The functions are external and noinline so that each keeps its own frame
 * and name, and each caller does work after its call so that none becomes a tail call. */
#include <stdint.h>
#include <stdio.h>

/* Kept in a volatile so the compiler sees an ordinary load, not a constant address it warns about. */
static volatile uintptr_t header_table = 0x8;

__attribute__((noinline)) int parse_header(const char *line) {
  int first = *(volatile const int *)header_table; /* the crash */
  return first + line[0];
}

__attribute__((noinline)) int handle_request(const char *line) {
  int parsed = parse_header(line);
  return parsed * 3 + 1;
}

int main(int argc, char **argv) {
  (void)argv;
  printf("handling a request\n");
  fflush(stdout);
  int result = handle_request(argc > 5 ? "GET" : "PUT");
  printf("%d\n", result);
  return 0;
}
