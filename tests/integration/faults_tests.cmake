# Faults during training (included by tests/integration/CMakeLists.txt): dmoe-train against real
# dmoe-dht and dmoe-server processes whose links go through dmoe::linkemu relays (delay, jitter,
# partitions), with servers killed, stopped and restarted, and a trainer killed and resumed. Reads
# the servers' checkpoints after each kill through dmoe::storage.
add_executable(train_faults_test
  ${CMAKE_CURRENT_LIST_DIR}/train_faults_test.cc
)
target_link_libraries(train_faults_test PRIVATE dmoe_integration_util dmoe::testing dmoe::linkemu dmoe::net
  dmoe::storage dmoe::safetensors nlohmann_json::nlohmann_json GTest::gtest_main)
target_compile_definitions(train_faults_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>"
  DMOE_ROUTER_BINARY="$<TARGET_FILE:dmoe-router>"
  DMOE_TRAIN_BINARY="$<TARGET_FILE:dmoe-train>")
add_dependencies(train_faults_test dmoe-server dmoe-dht dmoe dmoe-router dmoe-train)
dmoe_add_warnings(train_faults_test)
# Each test runs a swarm for minutes (the longest about 5 on a loaded two-core machine).
gtest_discover_tests(train_faults_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS integration TIMEOUT 900 RUN_SERIAL TRUE)
