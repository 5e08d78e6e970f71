# Poison (issue 12, part 5): rogue expert servers (tests/hostile/rogue_server.h) and a rogue
# trainer against real dmoe-server, dmoe-router and dmoe-train processes on loopback; the gating
# client's answer checks and the router's publication checks in process. Checkpoints and stored models are read back through
# dmoe::storage.
add_executable(poison_test
  ${CMAKE_CURRENT_LIST_DIR}/rogue_server.cc
  ${CMAKE_CURRENT_LIST_DIR}/poison_server_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/poison_router_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/poison_train_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/poison_gating_test.cc
)
target_link_libraries(poison_test PRIVATE dmoe_integration_util dmoe_router_fixture dmoe::testing dmoe::net dmoe::dht dmoe::storage
  dmoe::router dmoe::gating dmoe::expert_server dmoe::safetensors nlohmann_json::nlohmann_json GTest::gtest_main)
target_compile_definitions(poison_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_ROUTER_BINARY="$<TARGET_FILE:dmoe-router>"
  DMOE_TRAIN_BINARY="$<TARGET_FILE:dmoe-train>")
add_dependencies(poison_test dmoe-server dmoe-dht dmoe-router dmoe-train)
dmoe_add_warnings(poison_test)
gtest_discover_tests(poison_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS hostile TIMEOUT 180 RUN_SERIAL TRUE)
