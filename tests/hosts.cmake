# Hosts on one machine (issue 10): bridged containers, per-host cgroup parents, the downtime probe.
# The namespaces come from scripts/netns-hosts (tests/netns_hosts.h runs it).
godwit_helper(udp_echo ${CMAKE_CURRENT_SOURCE_DIR}/helpers/udp_echo.c)
target_link_options(udp_echo PRIVATE -static)
foreach(t bridge_test probe_test cgroup_parent_test)
  godwit_test(${t}
    SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/${t}.cc
    LIBS godwit_container godwit_runtime nlohmann_json::nlohmann_json Threads::Threads)
  target_compile_definitions(${t} PRIVATE GODWIT_SCRIPTS="${PROJECT_SOURCE_DIR}/scripts")
  add_dependencies(${t} udp_echo)
endforeach()
