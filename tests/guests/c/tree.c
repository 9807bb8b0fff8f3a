/* tree: prints the tree below argv[1] in name order, one line per entry, paths relative to it: "d PATH MODE" for a
 * directory, "f PATH MODE SIZE: CONTENTS" for a regular file (contents up to 64 bytes, as text), "l PATH -> TARGET"
 * for a symbolic link (not followed). Run natively and under Kiln on the same host tree, the two outputs must be the
 * same: what `kiln run --dir` (and its cache) gives the guest is what the host has. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;

static void walk(const char *root, const char *rel) {
  char dir[2 * PATH_MAX + 2];
  snprintf(dir, sizeof dir, "%s%s%s", root, *rel ? "/" : "", rel);
  struct dirent **names;
  int n = scandir(dir, &names, NULL, alphasort);
  if (n < 0) {
    printf("cannot list %s\n", rel);
    failures++;
    return;
  }
  for (int i = 0; i < n; i++) {
    const char *name = names[i]->d_name;
    if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
    char path[2 * PATH_MAX + 2], child[PATH_MAX];
    snprintf(child, sizeof child, "%s%s%s", rel, *rel ? "/" : "", name);
    snprintf(path, sizeof path, "%s/%s", root, child);
    struct stat st;
    if (lstat(path, &st) != 0) {
      printf("cannot stat %s\n", child);
      failures++;
    } else if (S_ISLNK(st.st_mode)) {
      char target[PATH_MAX];
      ssize_t len = readlink(path, target, sizeof target - 1);
      target[len < 0 ? 0 : len] = 0;
      printf("l %s -> %s\n", child, target);
    } else if (S_ISDIR(st.st_mode)) {
      printf("d %s %o\n", child, (unsigned)(st.st_mode & 07777));
      walk(root, child);
    } else {
      char data[65] = {0};
      int fd = open(path, O_RDONLY);
      ssize_t got = fd < 0 ? -1 : read(fd, data, 64);
      if (fd >= 0) close(fd);
      if (got < 0) failures++;
      printf("f %s %o %lld: %s\n", child, (unsigned)(st.st_mode & 07777), (long long)st.st_size, data);
    }
    free(names[i]);
  }
  free(names);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: tree DIR\n");
    return 2;
  }
  walk(argv[1], "");
  return failures ? 1 : 0;
}
