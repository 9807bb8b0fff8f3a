/* bigout: writes exactly 2 MiB of deterministic bytes to stdout, then one line to stderr.
 *
 * Byte i of the stream is pattern(i) below (the test computes the same function). Chunk sizes cycle through a list that
 * mixes tiny, page-sized, odd and over-1-MiB writes, alternating `write` with `writev` of up to four segments, so that
 * short writes, segment boundaries and the console's per-call limits are all exercised. Short writes are retried.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>

#define TOTAL (2u << 20)

static uint8_t pattern(uint32_t i) { return (uint8_t)((i * 2654435761u) >> 24); }

static uint8_t buf[TOTAL];

/* Writes buf[off, off+len) with one write() or writev() per call, resuming after short writes. */
static void emit(size_t off, size_t len, int use_writev) {
  while (len > 0) {
    ssize_t n;
    if (use_writev) {
      struct iovec iov[4];
      size_t left = len, at = off;
      int cnt = 0;
      /* Split into up to four uneven segments. */
      while (left > 0 && cnt < 4) {
        size_t seg = cnt == 3 ? left : (left + 2) / 3;
        if (seg > left) seg = left;
        iov[cnt].iov_base = buf + at;
        iov[cnt].iov_len = seg;
        at += seg;
        left -= seg;
        cnt++;
      }
      n = writev(1, iov, cnt);
    } else {
      n = write(1, buf + off, len);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("bigout: write");
      exit(2);
    }
    if (n == 0) {
      fprintf(stderr, "bigout: write returned 0\n");
      exit(2);
    }
    off += (size_t)n;
    len -= (size_t)n;
  }
}

int main(void) {
  static const size_t sizes[] = {1, 7, 4096, 65536, 100003, 3, 4095, 4097, (1u << 20) + 17, 511, 8192, 12345};
  for (uint32_t i = 0; i < TOTAL; i++) buf[i] = pattern(i);
  size_t off = 0;
  for (unsigned k = 0; off < TOTAL; k++) {
    size_t len = sizes[k % (sizeof sizes / sizeof sizes[0])];
    if (len > TOTAL - off) len = TOTAL - off;
    emit(off, len, k & 1);
    off += len;
  }
  fprintf(stderr, "bigout: wrote %u bytes\n", TOTAL);
  return 0;
}
