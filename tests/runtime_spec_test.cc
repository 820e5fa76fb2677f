// config.json parsing: what godwit accepts, and that unsupported fields are named, not ignored.
#include <gtest/gtest.h>
#include <sys/mount.h>

#include <nlohmann/json.hpp>

#include "runtime/cgroup.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
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
  j["mounts"].push_back({{"destination", "/sys/fs/cgroup"}, {"type", "cgroup"}});
  ExpectBad(j, "cgroup");
  j = Base();
  j["process"]["selinuxLabel"] = "x";
  ExpectBad(j, "process.selinuxLabel");
  j = Base();
  j["process"]["apparmorProfile"] = "x";
  ExpectBad(j, "process.apparmorProfile");
  j = Base();
  j["linux"]["resources"]["memory"] = {{"swap", 1}};
  ExpectBad(j, "linux.resources.memory.swap");
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
