/* hostile: a guest that talks to the VMM's hypercall port directly with garbage, as a buggy or hostile guest could.
 * The VMM must stop the VM with a message and stay sound. `hostile unknown` makes a hypercall with an unknown number;
 * `hostile write` a Write hypercall whose block holds whatever the last call left (in-range or not, the VMM checks);
 * `hostile port` writes to an I/O port next to the hypercall port; `hostile trace` makes a Trace hypercall, which
 * Kiln refuses unless run with --trace-syscalls (the block's first argument, left by the last write, names a "record"
 * that is guest memory either way). Natively the `out` instruction faults (SIGSEGV). */
#include <stdio.h>
#include <string.h>

static void out32(unsigned short port, unsigned int value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "unknown";
  printf("hostile: %s\n", what);
  fflush(stdout);
  if (strcmp(what, "unknown") == 0) out32(0x4b0, 0x7777);
  else if (strcmp(what, "port") == 0) out32(0x4b1, 1);
  else if (strcmp(what, "trace") == 0) out32(0x4b0, 3);
  printf("hostile: still running\n");
  return 0;
}
