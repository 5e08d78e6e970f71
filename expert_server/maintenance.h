// When the server's maintenance thread has work: a checkpoint every checkpoint period and an
// announcement every announcement period, each only when the server does that work (a database,
// a DHT). Pure: the time comes in as a parameter, so a test drives it with a FakeClock, and the
// thread (server.cc) sleeps exactly until next_due_us().
#ifndef DMOE_EXPERT_SERVER_MAINTENANCE_H_
#define DMOE_EXPERT_SERVER_MAINTENANCE_H_

#include <cstdint>
#include <optional>

namespace dmoe::expert_server {

class MaintenanceTimers {
 public:
  // Periods in microseconds; nullopt for a job the server does not do. Each job is first due one
  // period after `now_us` (monotonic microseconds, Clock::NowMonotonicUs).
  MaintenanceTimers(int64_t now_us, std::optional<int64_t> checkpoint_every_us,
                    std::optional<int64_t> announce_every_us);

  // When the next job is due; INT64_MAX when the server does neither job, so that the thread
  // sleeps until it is stopped instead of waking for a time that never moves.
  int64_t next_due_us() const;

  struct Due {
    bool checkpoint = false;
    bool announce = false;
  };
  // The jobs due at `now_us`; each of them is due again one period after `now_us`.
  Due TakeDue(int64_t now_us);

 private:
  // A job that never runs when off. (A plain flag rather than std::optional<Timer>: GCC 12 warns,
  // wrongly, that an engaged optional's fields may be read uninitialized once inlined elsewhere.)
  struct Timer {
    bool on = false;
    int64_t every_us = 0;
    int64_t due_us = 0;
  };
  static Timer Every(int64_t now_us, std::optional<int64_t> every_us);
  // True when `timer` is on and due at `now_us`, which then reschedules it.
  static bool Take(Timer& timer, int64_t now_us);

  Timer checkpoint_;
  Timer announce_;
};

}  // namespace dmoe::expert_server

#endif  // DMOE_EXPERT_SERVER_MAINTENANCE_H_
