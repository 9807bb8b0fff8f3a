/* redzone: does a syscall clobber the caller's red zone?
 *
 * The x86-64 SysV ABI lets a leaf function keep data in the 128 bytes below %rsp (the red zone). A real `syscall`
 * leaves that memory alone. Kiln rewrites `syscall` into `call *%rax`, and a `call` pushes its return address at
 * -8(%rsp) — exactly into the red zone — unless the VMM relocates or otherwise handles such sites. The leaf below,
 * written in assembly so the compiler cannot move anything, fills all 16 red-zone slots with distinct sentinels, makes a
 * raw `syscall` (getpid), and checks every slot. Exit 0: intact. Exit 1: clobbered (the slot is named). Exit 2: getpid
 * failed.
 */
#include <stdio.h>

/* Returns 0 if the red zone survived, else the (negative) offset of the first clobbered slot. Stores getpid's result
 * in *pid. */
long redzone_probe(long *pid);

__asm__(
    ".text\n"
    ".globl redzone_probe\n"
    ".type redzone_probe, @function\n"
    "redzone_probe:\n"
    /* Fill -8(%rsp) .. -128(%rsp) with sentinel ^ offset. */
    "  movabs $0x5a5aa5a5c0ffee00, %r8\n"
    "  mov $-8, %r9\n"
    "1:\n"
    "  mov %r8, %r10\n"
    "  xor %r9, %r10\n"
    "  mov %r10, (%rsp,%r9)\n"
    "  sub $8, %r9\n"
    "  cmp $-136, %r9\n"
    "  jne 1b\n"
    /* getpid via a raw syscall: r8, r9, r10 and rdi survive it (only rax, rcx, r11 change). */
    "  mov $39, %eax\n"
    "  syscall\n"
    "  mov %rax, (%rdi)\n"
    /* Check every slot. */
    "  mov $-8, %r9\n"
    "2:\n"
    "  mov %r8, %r10\n"
    "  xor %r9, %r10\n"
    "  cmp %r10, (%rsp,%r9)\n"
    "  jne 3f\n"
    "  sub $8, %r9\n"
    "  cmp $-136, %r9\n"
    "  jne 2b\n"
    "  xor %eax, %eax\n"
    "  ret\n"
    "3:\n"
    "  mov %r9, %rax\n"
    "  ret\n"
    ".size redzone_probe, .-redzone_probe\n");

int main(void) {
  long pid = 0;
  long bad = redzone_probe(&pid);
  if (bad != 0) {
    printf("redzone: clobbered at %ld(%%rsp)\n", bad);
    return 1;
  }
  if (pid <= 0) {
    printf("redzone: getpid returned %ld\n", pid);
    return 2;
  }
  printf("redzone: intact\n");
  return 0;
}
