# End to end (included by tests/integration/CMakeLists.txt): DHT node, 4 servers, router and
# dmoe-train as real processes; inference through the router; the dashboard in headless Chromium.
add_executable(train_e2e_test
  ${CMAKE_CURRENT_LIST_DIR}/train_e2e_test.cc
)
target_link_libraries(train_e2e_test PRIVATE dmoe_integration_util dmoe::testing dmoe::net dmoe::gating dmoe::data dmoe::safetensors
  nlohmann_json::nlohmann_json GTest::gtest_main)
target_compile_definitions(train_e2e_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>"
  DMOE_ROUTER_BINARY="$<TARGET_FILE:dmoe-router>"
  DMOE_TRAIN_BINARY="$<TARGET_FILE:dmoe-train>")
add_dependencies(train_e2e_test dmoe-server dmoe-dht dmoe dmoe-router dmoe-train)
dmoe_add_warnings(train_e2e_test)
gtest_discover_tests(train_e2e_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS integration TIMEOUT 900 RUN_SERIAL TRUE)
