/* stdin: echoes its stdin line by line ("got: LINE"), waiting in poll(2) for each piece as an interactive program
 * would, then says how many bytes came before the end ("stdin: end after N bytes"). With the argument `tty` it says
 * "tty: ready" first, answers a line "size" with whether its standard streams are terminals and the window's size
 * ("tty: in=1 out=1 rows=R cols=C"), and ends at a line "quit". */
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static void size(void) {
  struct winsize ws = {0};
  int got = ioctl(1, TIOCGWINSZ, &ws);
  printf("tty: in=%d out=%d rows=%d cols=%d\n", isatty(0), isatty(1), got == 0 ? ws.ws_row : -1,
         got == 0 ? ws.ws_col : -1);
}

int main(int argc, char **argv) {
  int tty = argc > 1 && strcmp(argv[1], "tty") == 0;
  if (tty) {
    printf("tty: ready\n");
    fflush(stdout);
  }
  char line[4096];
  size_t used = 0, total = 0;
  for (;;) {
    struct pollfd p = {.fd = 0, .events = POLLIN};
    if (poll(&p, 1, -1) != 1 || !(p.revents & (POLLIN | POLLHUP))) {
      printf("stdin: poll failed (revents %#x)\n", p.revents);
      return 1;
    }
    ssize_t n = read(0, line + used, sizeof line - 1 - used);
    if (n < 0) {
      perror("stdin: read");
      return 1;
    }
    if (n == 0) break;
    total += n;
    used += n;
    char *start = line, *nl;
    while ((nl = memchr(start, '\n', line + used - start))) {
      *nl = 0;
      if (nl > start && nl[-1] == '\r') nl[-1] = 0;
      if (tty && strcmp(start, "quit") == 0) return 0;
      if (tty && strcmp(start, "size") == 0)
        size();
      else
        printf("got: %s\n", start);
      fflush(stdout);
      start = nl + 1;
    }
    used = line + used - start;
    memmove(line, start, used);
    if (used == sizeof line - 1) used = 0;
  }
  printf("stdin: end after %zu bytes\n", total);
  return 0;
}
