#include "core/openmp_env.h"

#include <limits.h>
#include <unistd.h>

#include <cstdlib>

namespace dmoe {

void UsePassiveOpenMpWaitPolicy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/0);
  // Exec the binary's real path, not /proc/self/exe: the kernel names a process after the file
  // it execs, and ps, top and pkill should see "dmoe-server", not "exe".
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n > 0) {
    path[n] = '\0';
    execv(path, argv);
  }
  execv("/proc/self/exe", argv);
  // exec failed (no /proc): run on with the default policy rather than not at all.
}

}  // namespace dmoe
