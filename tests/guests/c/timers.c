/* timers: alarm, setitimer/getitimer and POSIX timers (timer_create ... timer_delete): one-shot and periodic
 * expiries reach their handlers with the right si_code, interrupt a blocking read, and the remaining times read back.
 * Also sigwait: a thread takes a blocked signal sent to the process, sigtimedwait times out, a timer's signal is
 * taken with sigwaitinfo (with its sigev_value), and SIGEV_THREAD timers (musl's and glibc's helper threads wait in
 * sigwaitinfo; glibc's finds the timer through si_value) run their function.
 * Each check prints one line; exits 0 when all held. With the argument `unhandled`, a timer's SIGALRM ends the
 * program (exit 142). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include "check.h"

static volatile sig_atomic_t alarms, usr1, last_code;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

static void on_usr1(int sig, siginfo_t *info, void *context) {
  (void)sig, (void)context;
  usr1++;
  last_code = info->si_code;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void handle(int sig, void (*handler)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

static void *waiter(void *arg) {
  sigset_t *set = arg;
  int sig = 0;
  sigwait(set, &sig);
  return (void *)(long)sig;
}

static volatile int thread_expiries;
static void on_expiry(union sigval value) {
  (void)value;
  thread_expiries++;
}

static void sigwait_family(void) {
  sigset_t usr2;
  sigemptyset(&usr2);
  sigaddset(&usr2, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &usr2, NULL);
  pthread_t t;
  void *got;
  pthread_create(&t, NULL, waiter, &usr2);
  struct timespec pause_a_little = {0, 20000000};
  nanosleep(&pause_a_little, NULL);
  kill(getpid(), SIGUSR2);
  pthread_join(t, &got);
  check((long)got == SIGUSR2, "sigwait in a thread takes a blocked signal sent to the process");

  struct timespec wait = {0, 20000000};
  double t0 = now();
  errno = 0;
  check(sigtimedwait(&usr2, NULL, &wait) == -1 && errno == EAGAIN && now() - t0 >= 0.019,
        "sigtimedwait with nothing pending: EAGAIN after the timeout");

  sigset_t rt;
  sigemptyset(&rt);
  sigaddset(&rt, SIGRTMIN);
  pthread_sigmask(SIG_BLOCK, &rt, NULL);
  static int marker;
  struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN, .sigev_value.sival_ptr = &marker};
  timer_t timer;
  struct itimerspec soon = {.it_value = {0, 10000000}};
  siginfo_t info;
  check(timer_create(CLOCK_MONOTONIC, &ev, &timer) == 0 && timer_settime(timer, 0, &soon, NULL) == 0 &&
            sigwaitinfo(&rt, &info) == SIGRTMIN && info.si_code == SI_TIMER,
        "sigwaitinfo takes a timer's signal (SI_TIMER)");
  check(info.si_value.sival_ptr == &marker, "with the timer's sigev_value");
  timer_delete(timer);

  struct sigevent threaded = {.sigev_notify = SIGEV_THREAD, .sigev_notify_function = on_expiry};
  struct itimerspec twice = {.it_interval = {0, 10000000}, .it_value = {0, 10000000}};
  check(timer_create(CLOCK_MONOTONIC, &threaded, &timer) == 0 && timer_settime(timer, 0, &twice, NULL) == 0,
        "a SIGEV_THREAD timer");
  for (int i = 0; i < 200 && thread_expiries < 2; i++) nanosleep(&pause_a_little, NULL);
  check(thread_expiries >= 2, "its function runs on each expiry");
  timer_delete(timer);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "unhandled") == 0) {
    printf("timers: waiting for an unhandled SIGALRM\n");
    fflush(stdout);
    struct itimerval soon = {.it_value = {0, 20000}};
    setitimer(ITIMER_REAL, &soon, NULL);
    for (;;) pause();
  }

  handle(SIGALRM, on_alarm);
  double t0 = now();
  struct itimerval once = {.it_value = {0, 50000}};
  check(setitimer(ITIMER_REAL, &once, NULL) == 0, "setitimer: 50 ms, once");
  pause();
  double waited = now() - t0;
  check(alarms == 1 && waited >= 0.049 && waited < 2.0, "the alarm ends pause() after 50 ms");

  check(alarm(5) == 0 && alarm(0) == 5, "alarm: a second call returns the seconds left of the first");

  alarms = 0;
  struct itimerval periodic = {.it_interval = {0, 10000}, .it_value = {0, 10000}}, read_back;
  setitimer(ITIMER_REAL, &periodic, NULL);
  sigset_t none;
  sigemptyset(&none);
  while (alarms < 5) sigsuspend(&none);
  check(getitimer(ITIMER_REAL, &read_back) == 0 && read_back.it_interval.tv_usec == 10000 &&
            read_back.it_value.tv_sec == 0 && read_back.it_value.tv_usec <= 10000,
        "a periodic timer: five expiries, getitimer reads its interval");
  struct itimerval off = {0};
  setitimer(ITIMER_REAL, &off, NULL);

  int fds[2];
  char b;
  pipe(fds);
  alarms = 0;
  struct itimerval interrupt = {.it_value = {0, 20000}};
  setitimer(ITIMER_REAL, &interrupt, NULL);
  errno = 0;
  check(read(fds[0], &b, 1) == -1 && errno == EINTR && alarms == 1, "an alarm interrupts a blocking read (EINTR)");

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGUSR1, &sa, NULL);
  struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1};
  timer_t timer;
  check(timer_create(CLOCK_MONOTONIC, &ev, &timer) == 0, "timer_create(CLOCK_MONOTONIC, SIGUSR1)");
  struct itimerspec spec = {.it_value = {1, 0}}, left;
  check(timer_settime(timer, 0, &spec, NULL) == 0 && timer_gettime(timer, &left) == 0 && left.it_value.tv_sec == 0 &&
            left.it_value.tv_nsec > 900000000,
        "timer_settime, and timer_gettime reads what is left");
  spec.it_value.tv_sec = 0;
  spec.it_value.tv_nsec = 20000000;
  timer_settime(timer, 0, &spec, NULL);
  while (usr1 == 0) pause();
  check(usr1 == 1 && last_code == SI_TIMER && timer_getoverrun(timer) == 0, "the timer's signal says SI_TIMER");
  struct timespec abs;
  clock_gettime(CLOCK_MONOTONIC, &abs);
  abs.tv_nsec += 20000000;
  if (abs.tv_nsec >= 1000000000) abs.tv_sec++, abs.tv_nsec -= 1000000000;
  struct itimerspec at = {.it_value = abs};
  check(timer_settime(timer, TIMER_ABSTIME, &at, NULL) == 0, "timer_settime(TIMER_ABSTIME)");
  while (usr1 == 1) pause();
  check(usr1 == 2, "an absolute expiry fires");
  check(timer_delete(timer) == 0, "timer_delete");
  errno = 0;
  check(timer_gettime(timer, &left) == -1 && errno == EINVAL, "a deleted timer is EINVAL");

  sigwait_family();
  printf("timers: %d failed\n", failures);
  return failures != 0;
}
