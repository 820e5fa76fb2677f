# Ports of the CRIU zdtm static tests issue 11 had as "mechanism present, unverified"
# (tests/helpers/z_port.c: TCP states, cgroups, ghost files, maps, sockets, /proc, creds), each
# through godwit dump -> kill -> reap -> restore, the restored program checking its own state.
godwit_helper(z_port ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_port.c Threads::Threads rt)
godwit_test(zdtm_port_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/zdtm_port_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(zdtm_port_test z_port)
