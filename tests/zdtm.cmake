# Ports of CRIU zdtm static tests (tests/helpers/z_static.c: processes and memory; z_files.c: file
# descriptors and sockets; z_kinds.c: O_PATH, namespace files, pidfds, more inet sockets) and
# real applications, each through godwit dump -> kill -> reap -> restore, the restored program
# checking its own state.
find_package(Threads REQUIRED)
godwit_helper(z_static ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_static.c Threads::Threads)
godwit_test(zdtm_static_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_static_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_static_test z_static)
godwit_helper(z_files ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_files.c util)
godwit_test(zdtm_files_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_files_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_files_test z_files)
# The fd kinds of issue 11 (z_kinds.c: O_PATH, nsfs, pidfds, UDP-Lite, ping and raw sockets) and
# CRIU's option names on dump and restore.
godwit_helper(z_kinds ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_kinds.c Threads::Threads)
godwit_test(zdtm_kinds_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_kinds_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_kinds_test z_kinds)

# Real applications (python3, busybox, redis-server, nginx when installed).
godwit_test(apps_real_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/apps_real_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
# Process state issue 11 found wrong after a restore (z_more.c: SIGTRAP, seccomp TSYNC,
# membarrier, loginuid; more socket and pipe states) and the never-lose-a-workload cases.
godwit_helper(z_more ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_more.c Threads::Threads)
godwit_test(zdtm_more_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_more_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_more_test z_more)
# Never lose a workload (issue 11): a container whose stdout is a host file through a kill-mode
# checkpoint and its restore.
godwit_test(zdtm_container_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_container_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
# Kernel objects of issue 11 (z_kobj.c: BPF maps, AIO rings, copy-on-write memory).
godwit_helper(z_kobj ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_kobj.c)
godwit_test(zdtm_kobj_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_kobj_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_kobj_test z_kobj)
