# Pipelined training (included by tests/integration/CMakeLists.txt): dmoe-train with several steps
# in flight against real dmoe-dht and dmoe-server processes on loopback.
add_executable(train_pipeline_test
  ${CMAKE_CURRENT_LIST_DIR}/train_pipeline_test.cc
)
target_link_libraries(train_pipeline_test PRIVATE dmoe_integration_util dmoe::testing dmoe::net dmoe::safetensors
  nlohmann_json::nlohmann_json GTest::gtest_main)
target_compile_definitions(train_pipeline_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>"
  DMOE_TRAIN_BINARY="$<TARGET_FILE:dmoe-train>")
add_dependencies(train_pipeline_test dmoe-server dmoe-dht dmoe dmoe-train)
dmoe_add_warnings(train_pipeline_test)
gtest_discover_tests(train_pipeline_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS integration TIMEOUT 900 RUN_SERIAL TRUE)
