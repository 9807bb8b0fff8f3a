// cxxthrow: catches exceptions thrown in libthrower.so (found through its RUNPATH, $ORIGIN) and in libstdc++.so.6.
#include <cstdio>
#include <stdexcept>
#include <vector>

void thrower_fail(int n);

int main() {
  int caught = 0;
  for (int i = 1; i <= 3; i++) {
    try {
      thrower_fail(i);
    } catch (const std::runtime_error &e) {
      std::printf("caught: %s\n", e.what());
      caught++;
    }
  }
  std::vector<int> v(10, 1);
  try {
    v.at(20) = 1;
  } catch (const std::out_of_range &) {
    std::printf("caught: out_of_range from libstdc++\n");
    caught++;
  }
  std::printf("cxxthrow: %s\n", caught == 4 ? "ok" : "FAILED");
  return caught == 4 ? 0 : 1;
}
