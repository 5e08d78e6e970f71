// TempDir: a fresh directory for one test, removed with everything in it when the object goes.
#ifndef DMOE_TESTS_TESTING_TEMP_DIR_H_
#define DMOE_TESTS_TESTING_TEMP_DIR_H_

#include <string>

namespace dmoe::testing {

class TempDir {
 public:
  // Creates $TMPDIR/<prefix>-XXXXXX (or under /tmp); throws std::runtime_error when it cannot,
  // since a test without its directory can do nothing useful.
  explicit TempDir(const std::string& prefix = "dmoe-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + name.
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }
  // Writes `contents` to Sub(name) and returns that path; throws std::runtime_error on failure.
  std::string WriteFile(const std::string& name, const std::string& contents) const;

 private:
  std::string path_;
};

}  // namespace dmoe::testing

#endif  // DMOE_TESTS_TESTING_TEMP_DIR_H_
