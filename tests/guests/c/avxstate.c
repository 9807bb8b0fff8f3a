/* avxstate: the AVX registers' upper halves, which neither the syscall ABI nor `fxsave` keeps, survive what the
 * library OS does to a thread computing in them without syscalls: time slices that switch two such threads on one
 * vCPU, and signal handlers that set every ymm register while the thread is interrupted. Each thread holds its own
 * values in ymm0-ymm14 through a loop, then checks them. Prints "avxstate: no AVX" where CPUID (with OSXSAVE) says
 * the program may not use AVX. */
#include "check.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define REGS 15
typedef uint64_t ymm[4];

static atomic_int handled, done;

/* ymm0-ymm14 from `in`, `iters` turns of a loop that touches no vector register, then ymm0-ymm14 into `out`. */
static void hold(const ymm *in, ymm *out, long iters) {
  __asm__ volatile(
      "vmovdqu 0(%[in]), %%ymm0\n"
      "vmovdqu 32(%[in]), %%ymm1\n"
      "vmovdqu 64(%[in]), %%ymm2\n"
      "vmovdqu 96(%[in]), %%ymm3\n"
      "vmovdqu 128(%[in]), %%ymm4\n"
      "vmovdqu 160(%[in]), %%ymm5\n"
      "vmovdqu 192(%[in]), %%ymm6\n"
      "vmovdqu 224(%[in]), %%ymm7\n"
      "vmovdqu 256(%[in]), %%ymm8\n"
      "vmovdqu 288(%[in]), %%ymm9\n"
      "vmovdqu 320(%[in]), %%ymm10\n"
      "vmovdqu 352(%[in]), %%ymm11\n"
      "vmovdqu 384(%[in]), %%ymm12\n"
      "vmovdqu 416(%[in]), %%ymm13\n"
      "vmovdqu 448(%[in]), %%ymm14\n"
      "1: dec %[n]\n"
      "jnz 1b\n"
      "vmovdqu %%ymm0, 0(%[out])\n"
      "vmovdqu %%ymm1, 32(%[out])\n"
      "vmovdqu %%ymm2, 64(%[out])\n"
      "vmovdqu %%ymm3, 96(%[out])\n"
      "vmovdqu %%ymm4, 128(%[out])\n"
      "vmovdqu %%ymm5, 160(%[out])\n"
      "vmovdqu %%ymm6, 192(%[out])\n"
      "vmovdqu %%ymm7, 224(%[out])\n"
      "vmovdqu %%ymm8, 256(%[out])\n"
      "vmovdqu %%ymm9, 288(%[out])\n"
      "vmovdqu %%ymm10, 320(%[out])\n"
      "vmovdqu %%ymm11, 352(%[out])\n"
      "vmovdqu %%ymm12, 384(%[out])\n"
      "vmovdqu %%ymm13, 416(%[out])\n"
      "vmovdqu %%ymm14, 448(%[out])\n"
      : [n] "+r"(iters)
      : [in] "r"(in), [out] "r"(out)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14");
}

static void clobber(int sig) {
  (void)sig;
  __asm__ volatile(
      "vpcmpeqd %%ymm0, %%ymm0, %%ymm0\n"
      "vpcmpeqd %%ymm1, %%ymm1, %%ymm1\n"
      "vpcmpeqd %%ymm2, %%ymm2, %%ymm2\n"
      "vpcmpeqd %%ymm3, %%ymm3, %%ymm3\n"
      "vpcmpeqd %%ymm4, %%ymm4, %%ymm4\n"
      "vpcmpeqd %%ymm5, %%ymm5, %%ymm5\n"
      "vpcmpeqd %%ymm6, %%ymm6, %%ymm6\n"
      "vpcmpeqd %%ymm7, %%ymm7, %%ymm7\n"
      "vpcmpeqd %%ymm8, %%ymm8, %%ymm8\n"
      "vpcmpeqd %%ymm9, %%ymm9, %%ymm9\n"
      "vpcmpeqd %%ymm10, %%ymm10, %%ymm10\n"
      "vpcmpeqd %%ymm11, %%ymm11, %%ymm11\n"
      "vpcmpeqd %%ymm12, %%ymm12, %%ymm12\n"
      "vpcmpeqd %%ymm13, %%ymm13, %%ymm13\n"
      "vpcmpeqd %%ymm14, %%ymm14, %%ymm14\n"
      "vpcmpeqd %%ymm15, %%ymm15, %%ymm15\n"
      "vzeroupper\n" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
  atomic_fetch_add(&handled, 1);
}

struct holder {
  ymm in[REGS], out[REGS];
  long iters;
};

static void fill(struct holder *h, int who) {
  for (int r = 0; r < REGS; r++)
    for (int l = 0; l < 4; l++) h->in[r][l] = (uint64_t)(who + 1) << 56 | (uint64_t)r << 8 | (uint64_t)l;
  memset(h->out, 0, sizeof h->out);
}

static void *run_holder(void *arg) {
  struct holder *h = arg;
  hold(h->in, h->out, h->iters);
  atomic_store(&done, 1);
  return NULL;
}

static int kept(const struct holder *h) { return memcmp(h->in, h->out, sizeof h->in) == 0; }

static int has_avx(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx");
}

int main(void) {
  if (!has_avx()) {
    printf("avxstate: no AVX\n");
    return 0;
  }
  /* Two threads holding different values, long enough for many time slices where they share a vCPU. */
  static struct holder a, b;
  fill(&a, 0);
  fill(&b, 1);
  a.iters = b.iters = 400000000;
  pthread_t ta, tb;
  pthread_create(&ta, NULL, run_holder, &a);
  pthread_create(&tb, NULL, run_holder, &b);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  check(kept(&a) && kept(&b), "two threads keep their ymm registers");

  /* One thread interrupted by signals whose handler sets every ymm register. */
  static struct holder c;
  fill(&c, 2);
  c.iters = 800000000;
  signal(SIGUSR1, clobber);
  atomic_store(&done, 0);
  pthread_t tc;
  pthread_create(&tc, NULL, run_holder, &c);
  struct timespec pause = {0, 2000000};
  while (!atomic_load(&done)) {
    pthread_kill(tc, SIGUSR1);
    nanosleep(&pause, NULL);
  }
  pthread_join(tc, NULL);
  check(atomic_load(&handled) > 0, "the handler ran");
  check(kept(&c), "a thread keeps its ymm registers through handlers that set them");
  return failures;
}
