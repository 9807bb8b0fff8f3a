/* crash: prints one line, then writes to address 0x10. Natively this dies of SIGSEGV (shell status 139); under Kiln the
 * VM ends and `kiln` reports `kiln: program crashed: SIGSEGV (page fault writing 0x10) at rip ...` and exits 139. */
#include <stdint.h>
#include <stdio.h>

/* Kept in a volatile so the compiler sees an ordinary store, not a constant address it warns about. */
static volatile uintptr_t target = 0x10;

int main(void) {
  printf("about to crash\n");
  fflush(stdout);
  *(volatile int *)target = 42;
  printf("still alive?\n");
  return 0;
}
