# Real-UDP DHT test: 16 dmoe-dht processes on loopback (included by tests/integration/CMakeLists.txt).
# Also drives `dmoe dht put/get` against the same processes.
add_executable(dht_udp_test ${CMAKE_CURRENT_LIST_DIR}/dht_udp_test.cc)
target_link_libraries(dht_udp_test PRIVATE dmoe::dht dmoe::processes GTest::gtest_main)
target_compile_definitions(dht_udp_test PRIVATE DMOE_CLI_BINARY="$<TARGET_FILE:dmoe>")
dmoe_add_warnings(dht_udp_test)
add_test(NAME dht_udp_test COMMAND dht_udp_test)
set_tests_properties(dht_udp_test PROPERTIES LABELS "dht;integration" TIMEOUT 120)
