// OpenMP's default wait policy lets idle worker threads spin. With several dmoe processes sharing
// a few cores (servers, a trainer, a router), the spinning threads steal the cores the others
// compute on: measured here, in-process p50 of an ffn at batch 16 went from 12-20 ms to 1.15 ms
// with OMP_WAIT_POLICY=passive. libgomp reads the variable when it is loaded, before main, so a
// process that wants it set must re-execute itself.
#ifndef DMOE_CORE_OPENMP_ENV_H_
#define DMOE_CORE_OPENMP_ENV_H_

namespace dmoe {

// When OMP_WAIT_POLICY is unset, sets it to "passive" and re-executes the program with the same
// arguments (does not return then). A value the user set is left alone. Call first thing in main.
void UsePassiveOpenMpWaitPolicy(char** argv);

}  // namespace dmoe

#endif  // DMOE_CORE_OPENMP_ENV_H_
