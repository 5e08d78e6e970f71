// Helpers shared by the storage tests and the checkpoint_writer helper process.
#ifndef DMOE_TESTS_STORAGE_TEST_UTIL_H_
#define DMOE_TESTS_STORAGE_TEST_UTIL_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "storage/expert_store.h"
#include "tests/testing/temp_dir.h"

namespace dmoe::storage::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
using dmoe::testing::TempDir;

// The contents the crash test writes at `step`: 1 to 4 tensors of mixed dtypes and sizes (up to a
// few hundred KiB, some above the blob-file threshold), derived only from `step`, so a reader can
// recompute exactly what a checkpoint at that step must hold.
std::vector<NamedTensor> TensorsForStep(int64_t step);
std::map<std::string, std::string> MetadataForStep(int64_t step);

// Empty when `checkpoint` holds exactly TensorsForStep/MetadataForStep of its step and its checksum
// is the one those contents give; otherwise a description of the first difference.
std::string DiffFromExpected(const Checkpoint& checkpoint);

}  // namespace dmoe::storage::testing

#endif  // DMOE_TESTS_STORAGE_TEST_UTIL_H_
