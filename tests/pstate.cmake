# Process state (proto/pstate.proto; dump/pstate.cc, restore/pstate*.cc): real dump -> kill ->
# restore round trips through the godwit binary, one test per kind.
find_package(Threads REQUIRED)
godwit_helper(ps_signals ${CMAKE_CURRENT_SOURCE_DIR}/helpers/ps_signals.c Threads::Threads)
godwit_helper(ps_creds ${CMAKE_CURRENT_SOURCE_DIR}/helpers/ps_creds.c Threads::Threads)
godwit_helper(ps_misc ${CMAKE_CURRENT_SOURCE_DIR}/helpers/ps_misc.c Threads::Threads)
godwit_helper(ps_timers ${CMAKE_CURRENT_SOURCE_DIR}/helpers/ps_timers.c)
# Ports of CRIU zdtm static tests of process state (tests/helpers/z_pstate.c).
godwit_helper(z_pstate ${CMAKE_CURRENT_SOURCE_DIR}/helpers/z_pstate.c Threads::Threads)

godwit_test(cr_pstate_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_pstate_test.cc
  LIBS nlohmann_json::nlohmann_json)
add_dependencies(cr_pstate_test ps_signals ps_creds ps_misc ps_timers z_pstate)
