/* cancel: pthread_cancel of a thread blocked in read(), as on Linux: musl's SIGCANCEL handler (SA_RESTART) acts only
 * if the interrupted syscall's resume address lies between its __cp_begin and __cp_end, so a restarted syscall must
 * resume in the program's own code, not in Kiln's stub for the site. Prints one line, exits 0 when cancelled. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static int fds[2];

static void *reader(void *arg) {
  (void)arg;
  char c;
  read(fds[0], &c, 1);
  return NULL;
}

int main(void) {
  pipe(fds);
  pthread_t t;
  pthread_create(&t, NULL, reader, NULL);
  usleep(20000);
  pthread_cancel(t);
  void *ret;
  pthread_join(t, &ret);
  int cancelled = ret == PTHREAD_CANCELED;
  printf("cancel: %s\n", cancelled ? "the blocked read was cancelled" : "the read returned");
  return !cancelled;
}
