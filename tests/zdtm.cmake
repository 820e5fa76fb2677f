# Ports of CRIU zdtm static tests (tests/helpers/z_static.c) and real applications, each through
# godwit dump -> kill -> reap -> restore, the restored program checking its own state.
find_package(Threads REQUIRED)
godwit_helper(z_static ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_static.c Threads::Threads)
godwit_test(zdtm_static_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_static_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_static_test z_static)

# Real applications (python3, busybox, redis-server, nginx when installed).
godwit_test(apps_real_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/apps_real_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
