/* debuggee: a program for the gdb stub's tests (tests/gdb.rs), built with DWARF at -O0. The main thread calls
 * compute() while a second thread waits in a read() on a pipe, so a breakpoint in compute() finds two threads: one
 * running the program's code, one blocked in the library OS. Prints the result and the counter that gdb may change,
 * and exits with 3. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static int pipefd[2];
volatile int shared_counter;

__attribute__((noinline)) int compute(int depth) {
  int local = depth * 7;
  shared_counter += local;
  return local + 1;
}

static void *worker(void *arg) {
  char c;
  if (read(pipefd[0], &c, 1) != 1) {
    return NULL;
  }
  return arg;
}

int main(void) {
  pthread_t t;
  if (pipe(pipefd) != 0 || pthread_create(&t, NULL, worker, NULL) != 0) {
    return 1;
  }
  usleep(20000); /* the worker blocks in its read meanwhile */
  int r = compute(6);
  if (write(pipefd[1], "x", 1) != 1) {
    return 1;
  }
  pthread_join(t, NULL);
  printf("result %d counter %d\n", r, shared_counter);
  return 3;
}
