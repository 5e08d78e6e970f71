# Fair resources (issue 12 part 4): a rogue client (rogue_client.{h,cc}, raw sockets from 127.0.0.2)
# with silent uploads, half WebSocket messages, unread answers and 1,000 connections, against real
# dmoe-server and dmoe-router processes.
add_executable(net_hostile_test
  ${CMAKE_CURRENT_LIST_DIR}/rogue_client.cc
  ${CMAKE_CURRENT_LIST_DIR}/net_resources_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/net_accept_test.cc
)
target_include_directories(net_hostile_test PRIVATE ${PROJECT_SOURCE_DIR})
target_link_libraries(net_hostile_test PRIVATE dmoe_integration_util dmoe::testing dmoe::net dmoe::storage
  dmoe::safetensors nlohmann_json::nlohmann_json GTest::gtest_main)
target_compile_definitions(net_hostile_test PRIVATE
  DMOE_SERVER_BINARY="$<TARGET_FILE:dmoe-server>"
  DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>"
  DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>"
  DMOE_ROUTER_BINARY="$<TARGET_FILE:dmoe-router>"
  DMOE_TRAIN_BINARY="$<TARGET_FILE:dmoe-train>")
add_dependencies(net_hostile_test dmoe-server dmoe-dht dmoe-router)
dmoe_add_warnings(net_hostile_test)
gtest_discover_tests(net_hostile_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS hostile TIMEOUT 120)
