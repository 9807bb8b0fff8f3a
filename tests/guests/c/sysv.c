/* sysv: System V message queues, semaphore sets and shared memory, used across threads: keys with IPC_CREAT and
 * IPC_EXCL, the errors Linux gives (ENOENT, EEXIST, EINVAL, E2BIG, ENOMSG, EAGAIN, ERANGE, EFBIG, EIDRM), blocking
 * msgrcv, msgsnd and semop woken by another thread, semtimedop's timeout, IPC_STAT/IPC_SET, and IPC_RMID waking a
 * waiter with EIDRM. One line per check; exits 0 when all held. The output is the same natively. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static void pause_ms(int ms) {
  struct timespec t = {ms / 1000, ms % 1000 * 1000000L};
  nanosleep(&t, NULL);
}

/* ---- message queues ---- */

struct message {
  long type;
  char text[8192];
};

static int queue;
static atomic_long got;

static void *receive(void *type) {
  static struct message m;
  long n = msgrcv(queue, &m, sizeof m.text, (long)type, 0);
  atomic_store(&got, n < 0 ? -errno : m.type * 1000 + n);
  return NULL;
}

static void *send_big(void *unused) {
  (void)unused;
  static struct message m = {.type = 9};
  atomic_store(&got, msgsnd(queue, &m, 8192, 0) == 0 ? 1 : -errno);
  return NULL;
}

static void messages(key_t key) {
  int id = msgget(key, IPC_CREAT | IPC_EXCL | 0600);
  check(id >= 0, "msgget IPC_CREAT|IPC_EXCL of a new key");
  check(msgget(key, 0) == id, "msgget of the key again: the same queue");
  check(msgget(key, IPC_CREAT | IPC_EXCL | 0600) == -1 && errno == EEXIST, "IPC_EXCL of an existing key: EEXIST");
  check(msgget(key + 1, 0600) == -1 && errno == ENOENT, "a missing key without IPC_CREAT: ENOENT");
  check(msgctl(id, IPC_RMID, NULL) == 0, "IPC_RMID");
  check(msgget(key, 0) == -1 && errno == ENOENT, "the key is gone with it");

  queue = msgget(IPC_PRIVATE, 0640);
  check(queue >= 0 && queue != msgget(IPC_PRIVATE, 0640), "IPC_PRIVATE makes a new queue each time");
  struct message m = {.type = 0};
  check(msgsnd(queue, &m, 4, 0) == -1 && errno == EINVAL, "msgsnd of type 0: EINVAL");
  m.type = 1;
  check(msgsnd(queue, &m, 8193, 0) == -1 && errno == EINVAL, "msgsnd over MSGMAX: EINVAL");
  check(msgrcv(queue, &m, 100, 0, IPC_NOWAIT) == -1 && errno == ENOMSG, "msgrcv of an empty queue: ENOMSG");
  for (long type = 3; type >= 1; type--) {
    m.type = type;
    snprintf(m.text, sizeof m.text, "type %ld", type);
    msgsnd(queue, &m, strlen(m.text) + 1, 0);
  }
  check(msgrcv(queue, &m, 100, -2, 0) == 7 && m.type == 1 && strcmp(m.text, "type 1") == 0,
        "msgrcv of type -2: the lowest type up to 2");
  check(msgrcv(queue, &m, 100, 3, MSG_EXCEPT) == 7 && m.type == 2, "MSG_EXCEPT: another type");
  check(msgrcv(queue, &m, 3, 0, 0) == -1 && errno == E2BIG, "a message longer than the buffer: E2BIG");
  check(msgrcv(queue, &m, 3, 0, MSG_NOERROR) == 3 && m.type == 3 && memcmp(m.text, "typ", 3) == 0,
        "MSG_NOERROR truncates");

  pthread_t t;
  pthread_create(&t, NULL, receive, (void *)5);
  pause_ms(20);
  m.type = 4;
  msgsnd(queue, &m, 10, 0);
  m.type = 5;
  msgsnd(queue, &m, 20, 0);
  pthread_join(t, NULL);
  check(atomic_load(&got) == 5020, "a blocked msgrcv takes the message of its type when it comes");

  struct msqid_ds ds;
  check(msgctl(queue, IPC_STAT, &ds) == 0 && ds.msg_qnum == 1 && ds.__msg_cbytes == 10 && ds.msg_qbytes == 16384 &&
            (ds.msg_perm.mode & 0777) == 0640,
        "IPC_STAT: one message of 10 bytes, MSGMNB, the mode");
  msgrcv(queue, &m, 100, 0, 0);
  m.type = 8;
  check(msgsnd(queue, &m, 8192, 0) == 0 && msgsnd(queue, &m, 8192, 0) == 0, "two messages of MSGMAX fill the queue");
  check(msgsnd(queue, &m, 1, IPC_NOWAIT) == -1 && errno == EAGAIN, "a full queue with IPC_NOWAIT: EAGAIN");
  atomic_store(&got, 0);
  pthread_create(&t, NULL, send_big, NULL);
  pause_ms(20);
  check(atomic_load(&got) == 0, "a msgsnd to a full queue waits");
  msgrcv(queue, &m, sizeof m.text, 0, 0);
  pthread_join(t, NULL);
  check(atomic_load(&got) == 1, "and goes through once there is room");
  ds.msg_qbytes = 12000;
  ds.msg_perm.mode = 0600;
  check(msgctl(queue, IPC_SET, &ds) == 0 && msgctl(queue, IPC_STAT, &ds) == 0 && ds.msg_qbytes == 12000 &&
            (ds.msg_perm.mode & 0777) == 0600,
        "IPC_SET: size and mode");
  msgrcv(queue, &m, sizeof m.text, 0, 0);
  msgrcv(queue, &m, sizeof m.text, 0, 0);

  /* The waiter must be inside msgrcv when the queue goes. On a loaded host a thread may take longer than the pause
   * to get there (it then finds the id gone: EINVAL), so that case is tried again on a new queue, pausing longer. */
  int removed = 1;
  for (int ms = 20; ms <= 2560; ms *= 2) {
    atomic_store(&got, 0);
    pthread_create(&t, NULL, receive, (void *)0);
    pause_ms(ms);
    removed &= msgctl(queue, IPC_RMID, NULL) == 0;
    pthread_join(t, NULL);
    if (atomic_load(&got) != -EINVAL) break;
    queue = msgget(IPC_PRIVATE, 0600);
  }
  check(removed, "IPC_RMID of a queue someone waits on");
  check(atomic_load(&got) == -EIDRM, "the waiter gets EIDRM");
  check(msgsnd(queue, &m, 1, 0) == -1 && errno == EINVAL, "the id is gone: EINVAL");
}

/* ---- semaphores ---- */

static int sems;
static atomic_int sem_result;

static void *take(void *unused) {
  (void)unused;
  struct sembuf op = {0, -2, 0};
  atomic_store(&sem_result, semop(sems, &op, 1) == 0 ? 1 : -errno);
  return NULL;
}

static void semaphores(key_t key) {
  sems = semget(key, 2, IPC_CREAT | 0600);
  check(sems >= 0, "semget of two semaphores");
  check(semget(key, 3, 0) == -1 && errno == EINVAL, "semget of more than the set has: EINVAL");
  check(semget(key, 0, 0) == sems, "semget with 0 of an existing set");
  check(semget(IPC_PRIVATE, 0, 0600) == -1 && errno == EINVAL, "a new set of none: EINVAL");
  check(semctl(sems, 0, SETVAL, 1) == 0 && semctl(sems, 0, GETVAL) == 1, "SETVAL and GETVAL");
  check(semctl(sems, 0, SETVAL, 40000) == -1 && errno == ERANGE, "SETVAL over SEMVMX: ERANGE");
  struct sembuf down = {0, -1, 0};
  check(semop(sems, &down, 1) == 0 && semctl(sems, 0, GETVAL) == 0, "semop -1");
  down.sem_flg = IPC_NOWAIT;
  check(semop(sems, &down, 1) == -1 && errno == EAGAIN, "semop that would wait, IPC_NOWAIT: EAGAIN");
  down.sem_flg = 0;
  struct timespec soon = {0, 20 * 1000000L};
  check(semtimedop(sems, &down, 1, &soon) == -1 && errno == EAGAIN, "semtimedop times out with EAGAIN");
  struct sembuf both[2] = {{0, 1, 0}, {1, -1, IPC_NOWAIT}};
  check(semop(sems, both, 2) == -1 && errno == EAGAIN && semctl(sems, 0, GETVAL) == 0,
        "all or nothing: the first operation is not applied");
  struct sembuf bad = {5, 1, 0};
  check(semop(sems, &bad, 1) == -1 && errno == EFBIG, "a semaphore number past the set: EFBIG");
  check(semop(sems, &bad, 0) == -1 && errno == EINVAL, "no operations: EINVAL");
  unsigned short all[2] = {3, 4};
  check(semctl(sems, 0, SETALL, all) == 0, "SETALL");
  all[0] = all[1] = 0;
  check(semctl(sems, 0, GETALL, all) == 0 && all[0] == 3 && all[1] == 4, "GETALL");
  struct sembuf wait_zero = {1, 0, IPC_NOWAIT};
  check(semop(sems, &wait_zero, 1) == -1 && errno == EAGAIN, "waiting for zero of a non-zero one: EAGAIN");

  semctl(sems, 0, SETVAL, 1);
  pthread_t t;
  atomic_store(&sem_result, 0);
  pthread_create(&t, NULL, take, NULL);
  while (semctl(sems, 0, GETNCNT) != 1) pause_ms(1);
  check(atomic_load(&sem_result) == 0, "semop -2 of 1 waits (GETNCNT says so)");
  struct sembuf up = {0, 1, 0};
  semop(sems, &up, 1);
  pthread_join(t, NULL);
  check(atomic_load(&sem_result) == 1 && semctl(sems, 0, GETVAL) == 0, "and goes through once it is 2");
  check(semctl(sems, 0, GETPID) == getpid(), "GETPID: this process");
  struct semid_ds ds;
  check(semctl(sems, 0, IPC_STAT, &ds) == 0 && ds.sem_nsems == 2 && (ds.sem_perm.mode & 0777) == 0600,
        "IPC_STAT of the set");

  atomic_store(&sem_result, 0);
  pthread_create(&t, NULL, take, NULL);
  while (semctl(sems, 0, GETNCNT) != 1) pause_ms(1);
  check(semctl(sems, 0, IPC_RMID) == 0, "IPC_RMID of a set someone waits on");
  pthread_join(t, NULL);
  check(atomic_load(&sem_result) == -EIDRM, "the waiter gets EIDRM");
}

/* ---- shared memory ---- */

static char *shared;
static void *write_shared(void *unused) {
  (void)unused;
  strcpy(shared + 5000, "written by a thread");
  return NULL;
}

static void shared_memory(key_t key) {
  int id = shmget(key, 10000, IPC_CREAT | 0600);
  check(id >= 0, "shmget of 10000 bytes");
  check(shmget(key, 20000, 0) == -1 && errno == EINVAL, "shmget of more than the segment has: EINVAL");
  check(shmget(IPC_PRIVATE, 0, 0600) == -1 && errno == EINVAL, "a segment of 0 bytes: EINVAL");
  char *a = shmat(id, NULL, 0);
  char *b = shmat(id, NULL, 0);
  check(a != (void *)-1 && b != (void *)-1 && a != b, "two attachments");
  check(a[0] == 0 && a[9999] == 0, "a new segment reads as zero");
  strcpy(a, "hello through a");
  check(strcmp(b, "hello through a") == 0, "b sees what a wrote");
  shared = b;
  pthread_t t;
  pthread_create(&t, NULL, write_shared, NULL);
  pthread_join(t, NULL);
  check(strcmp(a + 5000, "written by a thread") == 0, "a sees what a thread wrote through b");
  struct shmid_ds ds;
  check(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_segsz == 10000 && ds.shm_nattch == 2, "IPC_STAT: size, 2 attached");
  check(shmdt(b) == 0 && shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_nattch == 1, "shmdt: 1 attached");
  check(shmdt(b) == -1 && errno == EINVAL, "shmdt of what is not attached: EINVAL");
  check(shmctl(id, IPC_RMID, NULL) == 0, "IPC_RMID while attached");
  check(strcmp(a, "hello through a") == 0, "the attachment still works");
  check(shmget(key, 0, 0) == -1 && errno == ENOENT, "its key is free again");
  char *c = shmat(id, NULL, 0);
  check(c != (void *)-1 && strcmp(c, "hello through a") == 0, "still attachable while attached (Linux allows it)");
  check(shmdt(c) == 0 && shmdt(a) == 0, "the last shmdt");
  check(shmat(id, NULL, 0) == (void *)-1 && errno == EINVAL, "then the id is gone: EINVAL");
  /* Removed and detached: its memory is free again, so segments can come and go. */
  int ok = 1;
  for (int i = 0; i < 64 && ok; i++) {
    int s = shmget(IPC_PRIVATE, 1 << 20, 0600);
    char *p = shmat(s, NULL, 0);
    ok = s >= 0 && p != (void *)-1 && p[12345] == 0;
    if (ok) p[12345] = 1;
    ok = ok && shmctl(s, IPC_RMID, NULL) == 0 && munmap(p, 1 << 20) == 0;
  }
  check(ok, "64 segments of 1 MiB made, removed and unmapped in turn");
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  key_t key = 0x4b490000 + (getpid() & 0xffff);
  messages(key);
  semaphores(key);
  shared_memory(key);
  printf("sysv: %d failed\n", failures);
  return failures != 0;
}
