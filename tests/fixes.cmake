# Engine gap fixes (branch fixes): real dump -> kill -> restore round trips.
find_package(Threads REQUIRED)
godwit_helper(cr_fix_wake ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_fix_wake.c)
godwit_helper(cr_fix_mem ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_fix_mem.c)
godwit_helper(cr_fix_sess ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_fix_sess.c)

godwit_test(cr_fixes_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_fixes_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(cr_fixes_test cr_fix_wake cr_fix_mem cr_fix_sess)
