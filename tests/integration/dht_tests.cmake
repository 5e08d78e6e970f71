# Real-UDP DHT test: 16 dmoe-dht processes on loopback (included by tests/integration/CMakeLists.txt).
add_executable(dht_udp_test ${CMAKE_CURRENT_LIST_DIR}/dht_udp_test.cc)
target_link_libraries(dht_udp_test PRIVATE dmoe::dht dmoe::testing GTest::gtest_main)
target_compile_definitions(dht_udp_test PRIVATE DMOE_DHT_BINARY="$<TARGET_FILE:dmoe-dht>")
add_dependencies(dht_udp_test dmoe-dht)
if(TARGET dmoe)
  # Also drives `dmoe dht put/get` against the same processes.
  target_compile_definitions(dht_udp_test PRIVATE DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>")
  add_dependencies(dht_udp_test dmoe)
endif()
dmoe_add_warnings(dht_udp_test)
add_test(NAME dht_udp_test COMMAND dht_udp_test)
set_tests_properties(dht_udp_test PROPERTIES LABELS "dht;integration" TIMEOUT 120)
