#include "expert_server/maintenance.h"

#include <algorithm>
#include <limits>

namespace dmoe::expert_server {

MaintenanceTimers::MaintenanceTimers(int64_t now_us, std::optional<int64_t> checkpoint_every_us,
                                     std::optional<int64_t> announce_every_us)
    : checkpoint_(Every(now_us, checkpoint_every_us)),
      announce_(Every(now_us, announce_every_us)) {}

MaintenanceTimers::Timer MaintenanceTimers::Every(int64_t now_us, std::optional<int64_t> every_us) {
  if (!every_us) return Timer{};
  return Timer{true, *every_us, now_us + *every_us};
}

int64_t MaintenanceTimers::next_due_us() const {
  int64_t due = std::numeric_limits<int64_t>::max();
  if (checkpoint_.on) due = std::min(due, checkpoint_.due_us);
  if (announce_.on) due = std::min(due, announce_.due_us);
  return due;
}

bool MaintenanceTimers::Take(Timer& timer, int64_t now_us) {
  if (!timer.on || now_us < timer.due_us) return false;
  timer.due_us = now_us + timer.every_us;
  return true;
}

MaintenanceTimers::Due MaintenanceTimers::TakeDue(int64_t now_us) {
  Due due;
  due.checkpoint = Take(checkpoint_, now_us);
  due.announce = Take(announce_, now_us);
  return due;
}

}  // namespace dmoe::expert_server
