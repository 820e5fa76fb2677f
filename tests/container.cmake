# Container checkpoint/restore (issue 5): the per-namespace modules, then the whole container.
godwit_test(container_uts_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_uts_test.cc
  LIBS godwit_container)
godwit_test(container_ipc_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_ipc_test.cc
  LIBS godwit_container)
godwit_test(container_net_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_net_test.cc
  LIBS godwit_container nlohmann_json::nlohmann_json)
godwit_test(container_mnt_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_mnt_test.cc
  LIBS godwit_container)
godwit_test(container_archive_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_archive_test.cc
  LIBS godwit_container)
godwit_test(container_restore_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_restore_test.cc
  LIBS godwit_container godwit_runtime)
godwit_test(container_cli_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_cli_test.cc
  LIBS godwit_container godwit_runtime)
godwit_test(container_cr_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_cr_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
godwit_test(container_userns_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_userns_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json Threads::Threads)
godwit_test(container_tcp_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_tcp_test.cc
  LIBS godwit_container godwit_runtime godwit_files nlohmann_json::nlohmann_json Threads::Threads)
godwit_test(container_copy_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_copy_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
godwit_helper(c_threads ${CMAKE_CURRENT_SOURCE_DIR}/helpers/c_threads.c Threads::Threads)
target_link_options(c_threads PRIVATE -static)
add_dependencies(container_copy_test c_threads)
# Memory in containers: shared memory between processes of a restored container. c_shmem runs as
# the container's init, so it is linked statically (busybox rootfs).
godwit_helper(c_shmem ${CMAKE_CURRENT_SOURCE_DIR}/helpers/c_shmem.c)
target_link_options(c_shmem PRIVATE -static)
godwit_test(container_mm_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_mm_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
add_dependencies(container_mm_test c_shmem)
# Pre-copy of a running container, then a checkpoint of what changed (container/engine.h).
godwit_test(container_precopy_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_precopy_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
add_dependencies(container_precopy_test c_precopy)
