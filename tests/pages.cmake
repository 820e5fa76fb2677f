# The page dump/fill paths (dump/pages.*, restore/pages.*): fast paths and fallbacks.
godwit_helper(cr_pages ${CMAKE_CURRENT_SOURCE_DIR}/helpers/cr_pages.c)
godwit_test(cr_pages_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/cr_pages_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/cr_util.cc
  LIBS godwit_common)
add_dependencies(cr_pages_test cr_pages)
godwit_test(images_external_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/images_external_test.cc
  LIBS godwit_images)
