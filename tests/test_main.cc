// gtest main for every godwit test binary. The tests checkpoint and restore real processes; pid 1
// of this VM does not reap orphans, so a killed original would stay a zombie holding its pid.
// Making the test process a child subreaper lets tests reap what they started (by pid).
#include <sys/prctl.h>

#include <gtest/gtest.h>

int main(int argc, char** argv) {
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
