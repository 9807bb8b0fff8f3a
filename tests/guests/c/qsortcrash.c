/* qsortcrash: crashes inside the comparison function that glibc's qsort (in libc.so.6) calls: the crash report must
 * name the program's frames (compare_orders, sort_orders, main) and qsort's in libc between them. Built with the host
 * cc, -g, dynamically linked. */
#include <stdio.h>
#include <stdlib.h>

struct order {
  int id;
  const int *priority;
};

__attribute__((noinline)) static int compare_orders(const void *a, const void *b) {
  const struct order *x = a, *y = b;
  return *x->priority - *y->priority; /* the crash: the third order has no priority */
}

__attribute__((noinline)) static void sort_orders(struct order *orders, size_t n) {
  qsort(orders, n, sizeof *orders, compare_orders);
  printf("sorted %zu orders\n", n);
}

int main(void) {
  static const int high = 1, low = 2;
  struct order orders[] = {{1, &low}, {2, &high}, {3, NULL}, {4, &low}};
  printf("qsortcrash: sorting\n");
  fflush(stdout);
  sort_orders(orders, sizeof orders / sizeof *orders);
  return 0;
}
