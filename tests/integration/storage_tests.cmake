# Crash test of the checkpoint store (included by tests/integration/CMakeLists.txt): a
# checkpoint_writer child saves checkpoints in a loop and is killed with SIGKILL at random moments;
# the test reopens the store after each kill. Multi-process, so it lives here and not in
# tests/storage/; both use dmoe_storage_test_util (tests/storage/) for the expected contents.
add_executable(checkpoint_writer ${CMAKE_CURRENT_LIST_DIR}/checkpoint_writer.cc)
target_link_libraries(checkpoint_writer PRIVATE dmoe_storage_test_util)
dmoe_add_warnings(checkpoint_writer)

add_executable(storage_crash_test ${CMAKE_CURRENT_LIST_DIR}/crash_test.cc)
target_link_libraries(storage_crash_test PRIVATE dmoe_storage_test_util GTest::gtest_main)
target_compile_definitions(storage_crash_test PRIVATE
  DMOE_CHECKPOINT_WRITER="$<TARGET_FILE:checkpoint_writer>")
add_dependencies(storage_crash_test checkpoint_writer)
dmoe_add_warnings(storage_crash_test)
gtest_discover_tests(storage_crash_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS "storage;integration" TIMEOUT 300)
