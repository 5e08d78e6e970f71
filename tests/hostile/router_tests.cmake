# The router's bounded inference queue (issue 12 part 4), in process: a router, a DHT node and a
# stalling RogueServer (rogue_server.h) on loopback.
add_executable(router_hostile_test
  ${CMAKE_CURRENT_LIST_DIR}/rogue_server.cc
  ${CMAKE_CURRENT_LIST_DIR}/router_queue_test.cc
)
target_include_directories(router_hostile_test PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(router_hostile_test PRIVATE dmoe_integration_util dmoe::testing dmoe::net dmoe::dht dmoe::storage
  dmoe::router dmoe::gating dmoe::safetensors nlohmann_json::nlohmann_json GTest::gtest_main)
dmoe_add_warnings(router_hostile_test)
gtest_discover_tests(router_hostile_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS hostile TIMEOUT 120)
