/* flaky: an HTTP server on port 80 that answers `200` with the body argv[2] (default "ok") and a newline to its
 * first N requests (argv[1], default 3), then closes its listening socket and keeps running, answering nothing: a
 * health check must then see it fail. Prints "flaky: listening" first and "flaky: stopped answering" when it
 * stops. */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int answers = argc > 1 ? atoi(argv[1]) : 3;
  const char *body = argc > 2 ? argv[2] : "ok";
  char reply[512];
  int length = snprintf(reply, sizeof reply, "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n%s\n", strlen(body) + 1,
                        body);
  if (length < 0 || length >= (int)sizeof reply) return 2;
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(80), .sin_addr = {htonl(INADDR_ANY)}};
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 16) != 0) {
    perror("flaky: bind/listen");
    return 1;
  }
  printf("flaky: listening\n");
  fflush(stdout);
  for (int served = 0; served < answers; served++) {
    int c = accept(listener, 0, 0);
    if (c < 0) continue;
    char request[1024];
    read(c, request, sizeof request);
    write(c, reply, length);
    close(c);
  }
  close(listener);
  printf("flaky: stopped answering\n");
  fflush(stdout);
  for (;;) pause();
}
