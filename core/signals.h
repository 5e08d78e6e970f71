// Clean shutdown on SIGINT/SIGTERM for every executable: block the signals in main before any
// thread starts (threads inherit the mask), run, then wait for one synchronously.
#ifndef DMOE_CORE_SIGNALS_H_
#define DMOE_CORE_SIGNALS_H_

namespace dmoe {

// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts afterwards.
void BlockTerminationSignals();
// Waits for SIGINT or SIGTERM (blocked by BlockTerminationSignals) and returns its number.
int WaitForTerminationSignal();

}  // namespace dmoe

#endif  // DMOE_CORE_SIGNALS_H_
