/* jit: code made at run time is not rewritten. Writes `mov $39,%eax; syscall; ret` into fresh memory and calls it.
 * Natively this returns the pid; under Kiln the unrewritten `syscall` must end the VM with a message naming its
 * address (SIGSYS, exit 159), never a hang. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

int main(void) {
  static const unsigned char code[] = {0xb8, 0x27, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xc3};
  void *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    return 2;
  }
  memcpy(p, code, sizeof code);
  printf("jit: calling generated code at %p\n", p);
  fflush(stdout);
  long pid = ((long (*)(void))p)();
  printf("jit: generated code returned %ld\n", pid);
  return 0;
}
