// config.json parsing: what godwit accepts, and that unsupported fields are named, not ignored.
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <nlohmann/json.hpp>

#include "runtime/cgroup.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "runtime/seccomp.h"
#include "runtime/spec.h"

namespace godwit::runtime {
namespace {

using nlohmann::json;

json Base() {
  RunOptions o;
  o.rootfs = "/rootfs";
  o.args = {"sh"};
  return MakeConfig(o);
}

Result<Spec> Parse(const json& j) { return ParseSpec(j.dump(), "/bundle"); }

void ExpectBad(const json& j, const std::string& field) {
  auto s = Parse(j);
  ASSERT_FALSE(s.ok()) << j.dump();
  EXPECT_EQ(s.error().kind(), ErrorKind::kBadConfig);
  EXPECT_NE(s.error().message().find(field), std::string::npos) << s.error().message();
}

TEST(RuntimeSpecTest, GeneratedConfigParses) {
  RunOptions o;
  o.rootfs = "/r";
  o.args = {"sh", "-c", "x"};
  o.hostname = "h";
  o.memory = 1 << 26;
  o.cpus = 0.5;
  o.pids = 64;
  o.disk = 1 << 20;
  o.ip = "198.18.0.10/24";
  o.allow_ports = {"80", "53/udp"};
  auto s = Parse(MakeConfig(o));
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_EQ(s->root_path, "/r");
  EXPECT_EQ(s->hostname, "h");
  EXPECT_TRUE(s->ns.pid && s->ns.mount && s->ns.uts && s->ns.ipc && s->ns.network && s->ns.cgroup);
  EXPECT_FALSE(s->ns.user);
  EXPECT_EQ(*s->resources.memory_limit, 1 << 26);
  EXPECT_EQ(*s->resources.cpu_quota, 50000);
  EXPECT_EQ(*s->resources.cpu_period, 100000u);
  EXPECT_EQ(*s->resources.pids_limit, 64);
  EXPECT_EQ(s->disk_quota, 1 << 20);
  EXPECT_EQ(s->net.address, "198.18.0.10");
  EXPECT_EQ(s->net.prefix, 24);
  EXPECT_EQ(s->net.gateway, "198.18.0.1");
  ASSERT_EQ(s->net.allow_ports.size(), 2u);
  EXPECT_EQ(s->net.allow_ports[1].proto, "udp");
  ASSERT_EQ(s->mounts.size(), 6u);
  EXPECT_EQ(s->mounts[0].type, "proc");
  EXPECT_EQ(s->mounts[0].flags, static_cast<unsigned long>(MS_NOSUID | MS_NOEXEC | MS_NODEV));
  EXPECT_EQ(s->mounts[2].data, "newinstance,ptmxmode=0666,mode=0620");
}

TEST(RuntimeSpecTest, RelativeRootIsBundleRelative) {
  json j = Base();
  j["root"]["path"] = "rootfs";
  auto s = Parse(j);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->root_path, "/bundle/rootfs");
}

TEST(RuntimeSpecTest, UnsupportedFieldsAreNamed) {
  json j = Base();
  j["linux"]["seccomp"] = json::object();
  ExpectBad(j, "linux.seccomp");
  j = Base();
  j["hooks"] = json::object();
  ExpectBad(j, "hooks");
  j = Base();
  j["linux"]["namespaces"].push_back({{"type", "time"}});
  ExpectBad(j, "time");
  j = Base();
  j["linux"]["namespaces"][0]["path"] = "/proc/1/ns/pid";
  ExpectBad(j, "path");
  j = Base();
  j["mounts"].push_back({{"destination", "/mnt"}, {"type", "nfs"}});
  ExpectBad(j, "nfs");
  j = Base();
  j["process"]["selinuxLabel"] = "x";
  ExpectBad(j, "process.selinuxLabel");
  j = Base();
  j["process"]["apparmorProfile"] = "x";
  ExpectBad(j, "process.apparmorProfile");
  j = Base();
  j["linux"]["resources"]["memory"] = {{"kernel", 1}};
  ExpectBad(j, "linux.resources.memory.kernel");
  j = Base();
  j["linux"]["seccomp"] = {{"defaultAction", "SCMP_ACT_ALLOW"}, {"listenerPath", "/run/agent"}};
  ExpectBad(j, "linux.seccomp.listenerPath");
  j = Base();
  j["linux"]["resources"]["blockIO"] = json::object();
  ExpectBad(j, "linux.resources.blockIO");
  j = Base();
  j["linux"]["sysctl"] = {{"kernel.panic", "1"}};
  ExpectBad(j, "kernel.panic");
}

TEST(RuntimeSpecTest, MalformedValues) {
  ExpectBad("[1,2]", "object");
  json j = Base();
  j["process"]["args"] = json::array();
  ExpectBad(j, "process.args");
  j = Base();
  j["process"]["cwd"] = "relative";
  ExpectBad(j, "process.cwd");
  j = Base();
  j["linux"]["resources"]["memory"] = {{"limit", "lots"}};
  ExpectBad(j, "memory.limit");
  j = Base();
  j["annotations"] = {{kAnnoIp, "300.1.1.1/24"}};
  ExpectBad(j, kAnnoIp);
  j = Base();
  j["annotations"] = {{kAnnoAllowPorts, "http"}};
  ExpectBad(j, "http");
  j = Base();
  j["mounts"][0]["destination"] = "proc";
  ExpectBad(j, "absolute");
  j = Base();
  j["linux"]["namespaces"].push_back({{"type", "user"}});
  ExpectBad(j, "uidMappings");
  j = Base();
  j.erase("root");
  ExpectBad(j, "root");
}

TEST(RuntimeSpecTest, UserNamespaceMappingsAndCapabilities) {
  json j = Base();
  j["linux"]["namespaces"].push_back({{"type", "user"}});
  j["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", 100000}, {"size", 65536}}};
  j["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", 100000}, {"size", 65536}}};
  j["process"]["capabilities"] = {{"bounding", {"CAP_KILL", "CAP_NET_BIND_SERVICE"}},
                                  {"effective", {"CAP_KILL"}}};
  auto s = Parse(j);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  ASSERT_EQ(s->uid_mappings.size(), 1u);
  EXPECT_EQ(s->uid_mappings[0].host_id, 100000u);
  EXPECT_TRUE(s->process.caps.present);
  EXPECT_EQ(s->process.caps.bounding, (std::vector<int>{5, 10}));
  j["process"]["capabilities"]["effective"] = {"CAP_FLY"};
  ExpectBad(j, "CAP_FLY");
}

// What Podman sends (recorded from Podman 4.3.1): a seccomp profile, a cgroupsPath, a cgroup
// mount, a terminal, memory swap.
TEST(RuntimeSpecTest, PodmanFieldsParse) {
  json j = Base();
  j["linux"]["seccomp"] = {
      {"defaultAction", "SCMP_ACT_ERRNO"},
      {"defaultErrnoRet", 38},
      {"architectures", {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}},
      {"syscalls",
       {{{"names", {"read", "write", "no_such_syscall_here"}}, {"action", "SCMP_ACT_ALLOW"}},
        {{"names", {"personality"}},
         {"action", "SCMP_ACT_ALLOW"},
         {"args", {{{"index", 0}, {"value", 8}, {"op", "SCMP_CMP_EQ"}}}}},
        {{"names", {"socket"}},
         {"action", "SCMP_ACT_ERRNO"},
         {"errnoRet", 22},
         {"args", {{{"index", 0}, {"value", 40}, {"op", "SCMP_CMP_EQ"}}}}}}}};
  j["linux"]["cgroupsPath"] = "/libpod_parent/libpod-abc";
  j["mounts"].push_back({{"destination", "/sys/fs/cgroup"},
                         {"type", "cgroup"},
                         {"source", "cgroup"},
                         {"options", {"rprivate", "nosuid", "noexec", "nodev", "relatime", "ro"}}});
  j["process"]["terminal"] = true;
  j["process"]["consoleSize"] = {{"height", 40}, {"width", 120}};
  j["linux"]["resources"]["memory"] = {{"limit", 1 << 26}, {"swap", 1 << 27}};
  auto s = Parse(j);
  ASSERT_TRUE(s.ok()) << s.error().to_string();
  EXPECT_TRUE(s->seccomp.present);
  EXPECT_EQ(s->seccomp.syscalls.size(), 3u);
  EXPECT_EQ(s->seccomp.default_errno.value_or(0), 38u);
  EXPECT_EQ(s->cgroups_path, "/libpod_parent/libpod-abc");
  EXPECT_EQ(s->mounts.back().type, "cgroup");
  EXPECT_TRUE(s->mounts.back().flags & MS_RDONLY);
  EXPECT_TRUE(s->process.terminal);
  EXPECT_EQ(s->process.console_height, 40);
  EXPECT_EQ(s->process.console_width, 120);
  EXPECT_EQ(s->resources.memory_swap.value_or(0), 1 << 27);
  // libseccomp compiles it (the unknown syscall name is skipped, as runc does).
  auto prog = CompileSeccomp(s->seccomp);
  ASSERT_TRUE(prog.ok()) << prog.error().to_string();
  EXPECT_GT(prog->insns.size(), 4u);
  s->seccomp.syscalls[0].action = "SCMP_ACT_BOGUS";
  auto bad = CompileSeccomp(s->seccomp);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("SCMP_ACT_BOGUS"), std::string::npos);
}

TEST(RuntimeSpecTest, CgroupsPathPlacement) {
  auto p = ParseCgroupsPath("/libpod_parent/libpod-abc", false);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->parent, "libpod_parent");
  EXPECT_EQ(p->leaf, "libpod-abc");
  p = ParseCgroupsPath("top", false);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->parent, "");
  EXPECT_EQ(p->leaf, "top");
  // systemd's slice:prefix:name, laid out as systemd would on cgroupfs.
  p = ParseCgroupsPath("machine.slice:libpod:abc", true);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->parent, "machine.slice");
  EXPECT_EQ(p->leaf, "libpod-abc.scope");
  p = ParseCgroupsPath("user-1000.slice:crio:abc", true);
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->parent, "user.slice/user-1000.slice");
  EXPECT_EQ(p->leaf, "crio-abc.scope");
  EXPECT_FALSE(ParseCgroupsPath("/a/../b", false).ok());
  EXPECT_FALSE(ParseCgroupsPath("machine.slice:x", true).ok());
  EXPECT_FALSE(ParseCgroupsPath("notaslice:p:n", true).ok());
}

TEST(RuntimeSpecTest, ProcessAndResourcesAlone) {
  auto p = ParseProcessJson(R"({"terminal":true,"user":{"uid":5,"gid":6},"args":["true"],
                                "env":["A=b"],"cwd":"/tmp"})");
  ASSERT_TRUE(p.ok()) << p.error().to_string();
  EXPECT_TRUE(p->terminal);
  EXPECT_EQ(p->uid, 5u);
  EXPECT_EQ(p->cwd, "/tmp");
  EXPECT_FALSE(ParseProcessJson(R"({"args":["x"],"selinuxLabel":"l"})").ok());
  auto r = ParseResourcesJson(
      R"({"memory":{"limit":67108864,"swap":134217728},"cpu":{"quota":50000,"period":100000}})");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->memory_limit.value_or(0), 67108864);
  EXPECT_EQ(r->cpu_quota.value_or(0), 50000);
  EXPECT_FALSE(ParseResourcesJson(R"({"blockIO":{}})").ok());
}

TEST(RuntimeSpecTest, SignalsAndNames) {
  EXPECT_EQ(*ParseSignal("KILL"), 9);
  EXPECT_EQ(*ParseSignal("sigterm"), 15);
  EXPECT_EQ(*ParseSignal("10"), 10);
  EXPECT_FALSE(ParseSignal("NOPE").ok());
  EXPECT_TRUE(ValidateId("abc-1.2_x").ok());
  EXPECT_FALSE(ValidateId("../x").ok());
  EXPECT_FALSE(ValidateId("").ok());
  EXPECT_FALSE(ValidateId(std::string(65, 'a')).ok());
  std::string v = HostVethName("/run/godwit", "x");
  EXPECT_LE(v.size(), 15u);
  EXPECT_NE(v, HostVethName("/run/godwit", "y"));
  EXPECT_NE(v, HostVethName("/tmp/other", "x"));
}

TEST(RuntimeSpecTest, FirewallRuleset) {
  std::string r = FirewallRuleset({{80, "tcp"}, {443, "tcp"}, {53, "udp"}});
  EXPECT_NE(r.find("policy drop"), std::string::npos);
  EXPECT_NE(r.find("tcp dport { 80, 443 } accept"), std::string::npos);
  EXPECT_NE(r.find("udp dport { 53 } accept"), std::string::npos);
}

TEST(RuntimeSpecTest, CgroupLayoutDetected) {
  auto roots = DetectCgroupLayout();
  ASSERT_TRUE(roots.ok()) << roots.error().to_string();
  if (roots->layout != CgroupLayout::kV2) {
    EXPECT_FALSE(roots->v1.empty());
  }
  if (roots->layout != CgroupLayout::kV1) {
    EXPECT_FALSE(roots->unified.empty());
  }
}

}  // namespace
}  // namespace godwit::runtime
