# The authentication part of the hostile-peers suite (included by tests/hostile/CMakeLists.txt):
# signed requests replayed across real dmoe-server processes, strangers' DHT records, endpoints
# that cannot prove their key, --server-keys, and bans that follow a key to a new endpoint. Rogues
# live in rogue_auth.{h,cc}.
add_executable(auth_hostile_test
  ${CMAKE_CURRENT_LIST_DIR}/rogue_auth.cc
  ${CMAKE_CURRENT_LIST_DIR}/auth_replay_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/auth_records_test.cc
)
target_link_libraries(auth_hostile_test PRIVATE dmoe_integration_util dmoe::gating dmoe::dht dmoe::net dmoe::testing
  dmoe::safetensors nlohmann_json::nlohmann_json GTest::gtest_main)
target_compile_definitions(auth_hostile_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>"
  DMOE_ROUTER_BINARY="$<TARGET_FILE:dmoe-router>"
  DMOE_TRAIN_BINARY="$<TARGET_FILE:dmoe-train>")
add_dependencies(auth_hostile_test dmoe-server dmoe-dht dmoe dmoe-router dmoe-train)
dmoe_add_warnings(auth_hostile_test)
gtest_discover_tests(auth_hostile_test DISCOVERY_TIMEOUT 120
  PROPERTIES LABELS hostile TIMEOUT 120)
