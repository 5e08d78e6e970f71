# The router's bounded inference queue (issue 12 part 4), in process: a router, a DHT node and a
# stalling RogueServer (rogue_server.h) on loopback.
add_executable(router_hostile_test
  ${CMAKE_CURRENT_LIST_DIR}/rogue_server.cc
  ${CMAKE_CURRENT_LIST_DIR}/router_queue_test.cc
  ${PROJECT_SOURCE_DIR}/tests/integration/server_test_util.cc
  ${PROJECT_SOURCE_DIR}/tests/integration/swarm_util.cc
)
target_include_directories(router_hostile_test PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(router_hostile_test PRIVATE dmoe::testing dmoe::net dmoe::dht dmoe::storage
  dmoe::router dmoe::gating dmoe::safetensors nlohmann_json::nlohmann_json GTest::gtest_main)
# swarm_util (PrometheusValue) comes with its process helpers, which name the binaries.
target_compile_definitions(router_hostile_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_TRAIN_BINARY="$<TARGET_FILE:dmoe-train>")
add_dependencies(router_hostile_test dmoe-server dmoe-dht dmoe-train)
dmoe_add_warnings(router_hostile_test)
gtest_discover_tests(router_hostile_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS hostile TIMEOUT 120)
