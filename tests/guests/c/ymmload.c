/* ymmload: loads a known 256-bit value into ymm0 and calls ymm_loaded, an empty function for gdb to break in
 * (tests/gdb.rs reads ymm0 there and writes its top quadword); then prints ymm0 as it came back. The load, the call
 * and the store are one asm block, so the compiler never uses ymm0 in between. Prints "ymmload: no AVX" where
 * CPUID says the program may not use AVX. */
#include <stdint.h>
#include <stdio.h>

__asm__(".globl ymm_loaded\n"
        ".type ymm_loaded, @function\n"
        "ymm_loaded:\n"
        "  nop\n"
        "  ret\n"
        ".size ymm_loaded, .-ymm_loaded\n");

int main(void) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx")) {
    printf("ymmload: no AVX\n");
    return 0;
  }
  static const uint64_t in[4] = {0x1111111111111111ULL, 0x2222222222222222ULL, 0x3333333333333333ULL,
                                 0x4444444444444444ULL};
  static uint64_t out[4];
  __asm__ volatile("vmovdqu (%[in]), %%ymm0\n"
                   "sub $128, %%rsp\n" /* past the red zone */
                   "call ymm_loaded\n"
                   "add $128, %%rsp\n"
                   "vmovdqu %%ymm0, (%[out])\n"
                   "vzeroupper\n"
                   :
                   : [in] "r"(in), [out] "r"(out)
                   : "xmm0", "memory");
  printf("ymmload: %016llx %016llx %016llx %016llx\n", (unsigned long long)out[0], (unsigned long long)out[1],
         (unsigned long long)out[2], (unsigned long long)out[3]);
  return 0;
}
