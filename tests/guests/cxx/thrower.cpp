// thrower: a shared library (libthrower.so) whose function throws; cxxthrow.cpp catches what it throws, so the
// exception unwinds out of one shared object into another (the unwinder finds both through dl_iterate_phdr).
#include <stdexcept>
#include <string>

void thrower_fail(int n) {
  if (n > 0) throw std::runtime_error("thrown in libthrower.so: " + std::to_string(n));
}
