/* shm: POSIX shared memory and named semaphores (shm_open, sem_open: files in /dev/shm) and MAP_SHARED mappings
 * of in-memory files: two mappings of a file see each other's writes, read() and write() on the file see the
 * mappings' bytes and the mappings see write()'s, across threads, after munmap of one and after shm_unlink; a
 * MAP_PRIVATE mapping stays a copy; sem_post/sem_wait between threads. One line per check; exits 0 when all held.
 * The output is the same natively. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "check.h"

#define PAGE 4096
#define SIZE (3 * PAGE + 100)

static char *shared;
static void *write_through_mapping(void *unused) {
  (void)unused;
  strcpy(shared + 2 * PAGE + 10, "from a thread");
  return NULL;
}

static void mappings(const char *name) {
  int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
  check(fd >= 0, "shm_open creates an object in /dev/shm");
  check(shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600) == -1 && errno == EEXIST, "O_EXCL of it again: EEXIST");
  check(ftruncate(fd, SIZE) == 0, "ftruncate sizes it");
  char *p = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  char *q = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  check(p != MAP_FAILED && q != MAP_FAILED && p != q, "two MAP_SHARED writable mappings");
  check(p[0] == 0 && p[SIZE - 1] == 0, "the new object reads as zero");
  strcpy(p, "written through p");
  check(strcmp(q, "written through p") == 0, "q sees what p wrote");
  strcpy(q + PAGE + 7, "written through q");
  check(strcmp(p + PAGE + 7, "written through q") == 0, "p sees what q wrote");
  char buf[32] = {0};
  check(pread(fd, buf, 17, 0) == 17 && memcmp(buf, "written through p", 17) == 0, "read() sees the mapping's bytes");
  check(pwrite(fd, "by write()", 11, 3 * PAGE) == 11 && strcmp(p + 3 * PAGE, "by write()") == 0,
        "the mapping sees write()'s bytes");
  shared = q;
  pthread_t t;
  pthread_create(&t, NULL, write_through_mapping, NULL);
  pthread_join(t, NULL);
  check(strcmp(p + 2 * PAGE + 10, "from a thread") == 0, "a thread's write through q reaches p");
  char *r = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, PAGE);
  check(r != MAP_FAILED && strcmp(r + 7, "written through q") == 0, "a read-only mapping at an offset");
  char *private = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  check(private != MAP_FAILED && strcmp(private, "written through p") == 0, "MAP_PRIVATE starts as the file");
  strcpy(private, "private");
  check(strcmp(p, "written through p") == 0, "and its writes stay its own");
  check(munmap(p, SIZE) == 0 && strcmp(q, "written through p") == 0, "munmap of one mapping leaves the other");
  check(shm_unlink(name) == 0, "shm_unlink");
  check(shm_open(name, O_RDWR, 0) == -1 && errno == ENOENT, "the name is gone");
  strcpy(q + 50, "after unlink");
  check(pread(fd, buf, 12, 50) == 12 && memcmp(buf, "after unlink", 12) == 0, "the object lives on while open");
  struct stat st;
  check(fstat(fd, &st) == 0 && st.st_size == SIZE, "fstat: its size");
  check(ftruncate(fd, 5 * PAGE) == 0 && pread(fd, buf, 8, 4 * PAGE) == 8 && buf[0] == 0 && buf[7] == 0,
        "grown: the new part reads as zero");
  check(ftruncate(fd, 10) == 0 && ftruncate(fd, SIZE) == 0 && q[11] == 0 && q[PAGE + 7] == 0,
        "shrunk and grown again: what was cut off reads as zero");
  munmap(q, SIZE);
  munmap(r, PAGE);
  munmap(private, SIZE);
  close(fd);

  /* A file anywhere in memory, not only in /dev/shm. */
  char path[64];
  snprintf(path, sizeof path, "/tmp/shm-test-%d", getpid());
  fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
  check(fd >= 0 && write(fd, "0123456789", 10) == 10, "a file in /tmp");
  p = mmap(NULL, 10, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  check(p != MAP_FAILED && memcmp(p, "0123456789", 10) == 0, "MAP_SHARED of it holds its bytes");
  p[0] = 'X';
  check(pread(fd, buf, 10, 0) == 10 && buf[0] == 'X', "a write through the mapping reaches the file");
  munmap(p, 10);
  close(fd);
  unlink(path);
}

static sem_t *ping, *pong;
static void *ponger(void *unused) {
  (void)unused;
  for (int i = 0; i < 1000; i++) {
    sem_wait(ping);
    sem_post(pong);
  }
  return NULL;
}

static void semaphores(const char *name, const char *name2) {
  ping = sem_open(name, O_CREAT | O_EXCL, 0600, 0);
  pong = sem_open(name2, O_CREAT | O_EXCL, 0600, 0);
  check(ping != SEM_FAILED && pong != SEM_FAILED, "sem_open creates two named semaphores");
  check(sem_open(name, O_CREAT | O_EXCL, 0600, 0) == SEM_FAILED && errno == EEXIST, "O_EXCL again: EEXIST");
  sem_t *again = sem_open(name, 0);
  check(again != SEM_FAILED, "sem_open of an existing name");
  sem_post(again);
  int v = -1;
  check(sem_getvalue(ping, &v) == 0 && v == 1, "a post through one handle counts in the other");
  sem_wait(ping);
  pthread_t t;
  pthread_create(&t, NULL, ponger, NULL);
  int ok = 1;
  for (int i = 0; i < 1000 && ok; i++) {
    ok = sem_post(ping) == 0 && sem_wait(pong) == 0;
  }
  pthread_join(t, NULL);
  check(ok, "1000 rounds of sem_post/sem_wait between threads");
  check(sem_trywait(ping) == -1 && errno == EAGAIN, "sem_trywait of a zero semaphore: EAGAIN");
  sem_close(again);
  check(sem_close(ping) == 0 && sem_close(pong) == 0, "sem_close");
  check(sem_unlink(name) == 0 && sem_unlink(name2) == 0, "sem_unlink");
  check(sem_open(name, 0) == SEM_FAILED && errno == ENOENT, "the name is gone");
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  char name[64], sem1[64], sem2[64];
  snprintf(name, sizeof name, "/kiln-shm-%d", getpid());
  snprintf(sem1, sizeof sem1, "/kiln-ping-%d", getpid());
  snprintf(sem2, sizeof sem2, "/kiln-pong-%d", getpid());
  mappings(name);
  semaphores(sem1, sem2);
  printf("shm: %d failed\n", failures);
  return failures != 0;
}
