// The command layer: verb dispatch, usage errors, exit codes, the subreaper verb.
#include <sys/wait.h>

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace {

int Sh(const std::string& cmd) {
  int st = system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

const std::string kGodwit = GODWIT_BIN;

TEST(Cli, UnknownVerbAndOptionAreUsageErrors) {
  EXPECT_EQ(Sh(kGodwit + " no-such-verb 2>/dev/null"), 2);
  EXPECT_EQ(Sh(kGodwit + " 2>/dev/null >/dev/null"), 2);
  EXPECT_EQ(Sh(kGodwit + " help >/dev/null"), 0);
  EXPECT_EQ(Sh(kGodwit + " --version >/dev/null"), 0);
}

TEST(Cli, SubreaperPassesExitStatusAndReapsOrphans) {
  EXPECT_EQ(Sh(kGodwit + " subreaper -- sh -c 'exit 7'"), 7);
  EXPECT_EQ(Sh(kGodwit + " subreaper -- /nonexistent/prog 2>/dev/null"), 127);
  EXPECT_EQ(Sh(kGodwit + " subreaper 2>/dev/null"), 2);
  // An orphan that dies while CMD still runs is reaped by the subreaper: CMD waits for the
  // orphan's pipe to close, then checks that no zombie with its pid remains after a reap.
  EXPECT_EQ(Sh(kGodwit + " subreaper -- sh -c '"
                          "p=$( (sh -c \"echo \\$\\$\" &) | cat ); "
                          "for i in $(seq 1000); do [ -e /proc/$p ] || exit 0; "
                          "grep -q \"^State:.*Z\" /proc/$p/status 2>/dev/null && continue; done; "
                          "[ ! -e /proc/$p ]'"),
            0);
}

}  // namespace
