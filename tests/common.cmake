godwit_test(common_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/common_test.cc LIBS godwit_common)
godwit_test(common_kernel_test SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/common_kernel_test.cc
            LIBS godwit_common)
