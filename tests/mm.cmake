# Memory in containers (issue 3 / issue 5): shared memory between processes of a restored
# container. c_shmem runs as the container's init, so it is linked statically (busybox rootfs).
godwit_helper(c_shmem ${CMAKE_CURRENT_SOURCE_DIR}/helpers/c_shmem.c)
target_link_options(c_shmem PRIVATE -static)
godwit_test(container_mm_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/container_mm_test.cc
  LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json)
add_dependencies(container_mm_test c_shmem)
