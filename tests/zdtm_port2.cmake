# Ports of CRIU zdtm static tests that failed as CRIU's own binaries while their earlier ports
# passed (tests/helpers/z_port2.c: controlling terminals held by no fd, sessions kept across
# nested setsid calls, TCP peers gone, pidfds of threads), each through godwit dump -> kill ->
# reap -> restore.
godwit_helper(z_port2 ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_port2.c Threads::Threads)
godwit_test(zdtm_port2_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_port2_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_port2_test z_port2)
