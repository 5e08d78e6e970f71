# DHT rogues (issue 12 part 3): Sybils ground around a key that censor it, spoofed sender keys,
# forged and replayed records, store floods and reflection, on the simulated network (256 nodes)
# and on real UDP sockets on loopback. Included by tests/hostile/CMakeLists.txt.
add_library(dmoe_rogue_dht STATIC ${CMAKE_CURRENT_LIST_DIR}/rogue_dht.cc)
target_link_libraries(dmoe_rogue_dht PUBLIC dmoe::dht_core)
target_include_directories(dmoe_rogue_dht PUBLIC ${PROJECT_SOURCE_DIR})
dmoe_add_warnings(dmoe_rogue_dht)

add_executable(dht_hostile_test
  ${CMAKE_CURRENT_LIST_DIR}/dht_sybil_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/dht_rogue_test.cc
  ${CMAKE_CURRENT_LIST_DIR}/dht_udp_hostile_test.cc
)
target_link_libraries(dht_hostile_test PRIVATE dmoe_rogue_dht dmoe::dht GTest::gtest_main)
dmoe_add_warnings(dht_hostile_test)
gtest_discover_tests(dht_hostile_test DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS "hostile;dht" TIMEOUT 120)
