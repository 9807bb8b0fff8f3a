/* hitcount: an HTTP server on port 80 that counts the requests it answered and says so: the Nth answer's body is
 * "hit N" and a newline. Its count is state a restart loses and a kept VM does not: after a kilnd restart that kept
 * it, the next answer goes on from the last one instead of starting at 1 again. Prints "hitcount: listening" first. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(80), .sin_addr = {htonl(INADDR_ANY)}};
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 64) != 0) {
    perror("hitcount: bind/listen");
    return 1;
  }
  printf("hitcount: listening\n");
  fflush(stdout);
  for (unsigned long hits = 1;;) {
    int c = accept(listener, 0, 0);
    if (c < 0) continue;
    char request[1024];
    if (read(c, request, sizeof request) > 0) {
      char body[64], reply[256];
      int n = snprintf(body, sizeof body, "hit %lu\n", hits);
      int length = snprintf(reply, sizeof reply, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", n, body);
      if (write(c, reply, length) == length) hits++;
    }
    close(c);
  }
}
