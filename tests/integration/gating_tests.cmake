# Multi-process tests of the gating client (included by tests/integration/CMakeLists.txt): real
# dmoe-dht and dmoe-server processes, stopped, killed and NaN-answering, against
# RemoteMixtureOfExperts in the test process.
add_executable(gating_integration_test ${CMAKE_CURRENT_LIST_DIR}/gating_exclusion_test.cc)
target_link_libraries(gating_integration_test PRIVATE dmoe::gating dmoe::expert_server dmoe::dht
  dmoe::processes GTest::gtest_main)
dmoe_add_warnings(gating_integration_test)
gtest_discover_tests(gating_integration_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS "gating;integration" TIMEOUT 150)
