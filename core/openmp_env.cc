#include "core/openmp_env.h"

#include <unistd.h>

#include <cstdlib>

namespace dmoe {

void UsePassiveOpenMpWaitPolicy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", /*overwrite=*/0);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc): run on with the default policy rather than not at all.
}

}  // namespace dmoe
