# Multi-process tests of dmoe-server (included by tests/integration/CMakeLists.txt): real server,
# dmoe-dht and dmoe processes on loopback, driven over HTTP, WebSocket and UDP. Torch-free: tensors
# go through dmoe::safetensors.
add_executable(server_integration_test
  ${CMAKE_CURRENT_LIST_DIR}/server_restart_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/server_dht_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/server_flags_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/server_auth_test.cc
)
target_link_libraries(server_integration_test PRIVATE dmoe_integration_util dmoe::testing dmoe::net dmoe::dht
  dmoe::safetensors nlohmann_json::nlohmann_json GTest::gtest_main)
target_compile_definitions(server_integration_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>")
add_dependencies(server_integration_test dmoe-server dmoe-dht dmoe)
dmoe_add_warnings(server_integration_test)
gtest_discover_tests(server_integration_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS integration TIMEOUT 120)
