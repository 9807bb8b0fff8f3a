/* anonmaps: what /proc/self/maps and /proc/self/stat's vsize and rss show of the program's anonymous memory, printed
 * as facts that hold on Linux and in Kiln alike (no addresses), so that the test compares the two outputs: two
 * mappings with an unmapped hole between them are listed as Linux lists anonymous memory (rw-p, no name), ending
 * and beginning at the hole, which no line covers; a read-only one is r--p; vsize grows and shrinks by what is
 * mapped and unmapped, and rss is at most vsize's pages. Nothing here allocates between the calls and the reads
 * (raw reads into static buffers), so that no other mapping appears meanwhile. */
#define _GNU_SOURCE
#include "check.h"
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096L

static char text[1 << 20];

/* The whole of a /proc file, NUL-terminated, into `text`. */
static int slurp(const char *path) {
  int fd = open(path, O_RDONLY);
  long n = 0, got;
  while (fd >= 0 && n < (long)sizeof text - 1 && (got = read(fd, text + n, sizeof text - 1 - n)) > 0) n += got;
  if (fd >= 0) close(fd);
  text[n] = 0;
  return n > 0;
}

struct line {
  unsigned long start, end;
  char perms[5];
  int named;
};

/* The line of /proc/self/maps covering `addr` (read just before), if any. */
static int covering(const void *addr, struct line *found) {
  for (char *l = text; *l;) {
    char *next = strchr(l, '\n');
    if (!next) break;
    *next = 0;
    struct line at = {0};
    int name = 0;
    if (sscanf(l, "%lx-%lx %4s %*s %*s %*s %n", &at.start, &at.end, at.perms, &name) == 3) {
      at.named = name > 0 && l[name] != 0;
      if ((unsigned long)addr >= at.start && (unsigned long)addr < at.end) {
        *found = at;
        *next = '\n';
        return 1;
      }
    }
    *next = '\n';
    l = next + 1;
  }
  return 0;
}

/* vsize (bytes) and rss (pages), fields 23 and 24 of /proc/self/stat. */
static void usage(long *vsize, long *rss) {
  *vsize = *rss = -1;
  if (!slurp("/proc/self/stat")) return;
  char *p = strrchr(text, ')');
  for (int field = 3; p && field <= 24; field++) {
    p = strchr(p + 1, ' ');
    if (p && field == 23) *vsize = atol(p + 1);
    if (p && field == 24) *rss = atol(p + 1);
  }
}

int main(void) {
  long v0, r0, v1, r1, v2, r2;
  usage(&v0, &r0);
  char *m = mmap(0, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (int i = 0; m != MAP_FAILED && i < 8; i++) m[i * PG] = 1;
  usage(&v1, &r1);
  /* The hole: pages 2..5, leaving [m, m+2) and [m+6, m+8). */
  int unmapped = m != MAP_FAILED && munmap(m + 2 * PG, 4 * PG) == 0;
  usage(&v2, &r2);
  struct line first, second, hole;
  int listed = slurp("/proc/self/maps");
  int has_first = covering(m, &first), has_second = covering(m + 7 * PG, &second);
  int in_hole = covering(m + 2 * PG, &hole) || covering(m + 5 * PG, &hole);
  char *ro = mmap(0, 2 * PG, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  struct line read_only;
  int has_ro = ro != MAP_FAILED && slurp("/proc/self/maps") && covering(ro + PG, &read_only);

  check(unmapped && listed, "mapped eight pages, unmapped four in the middle, read /proc/self/maps");
  check(has_first && strcmp(first.perms, "rw-p") == 0 && !first.named, "the first part is listed: rw-p, no name");
  check(has_second && strcmp(second.perms, "rw-p") == 0 && !second.named, "the second part: rw-p, no name");
  check(has_first && first.end == (unsigned long)(m + 2 * PG), "the first part's line ends at the hole");
  check(has_second && second.start == (unsigned long)(m + 6 * PG), "the second part's line begins after the hole");
  check(!in_hole, "no line covers the hole");
  check(has_ro && strcmp(read_only.perms, "r--p") == 0 && !read_only.named, "a read-only mapping: r--p, no name");
  check(v1 - v0 == 8 * PG, "vsize grew by the eight pages mapped");
  check(v1 - v2 == 4 * PG, "and fell by the four unmapped");
  /* Linux counts resident pages lazily (per thread, in batches: a small program may read 0), so rss is only
   * bounded here. */
  check(r0 >= 0 && r1 >= 0 && r2 >= 0 && r1 <= v1 / PG && r2 <= v2 / PG, "rss is at most the pages of vsize");
  return failures;
}
