// BPF maps (anon_inode:bpf-map, zdtm bpf_hash and bpf_array). Dump reads the map's attributes
// (BPF_OBJ_GET_INFO_BY_FD on the dumper's copy of the fd) and fdinfo (frozen, memlock), then every
// element: BPF_MAP_GET_NEXT_KEY from no key to the end, BPF_MAP_LOOKUP_ELEM for each. Restore
// creates a map with the same type, sizes, entry count, flags, name and map_extra, writes every
// element back with BPF_MAP_UPDATE_ELEM and freezes it again if it was frozen (after the writes:
// a frozen map refuses them).
//
// Refused at dump (kUnsupported, naming pid and fd): maps with BTF (the BTF object would have to
// be dumped too), offloaded maps (ifindex), maps whose elements cannot be read or written again
// from user space (BPF_F_WRONLY, BPF_F_RDONLY with elements), and map types without keys to walk
// (queues, stacks, bloom filters, ring buffers, maps of maps and of programs, sockets, ...).
#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {
namespace {

long Bpf(int cmd, bpf_attr* attr) {
  return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

bool PerCpu(uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

// Types whose elements are all reachable with GET_NEXT_KEY and LOOKUP_ELEM, and written again
// with UPDATE_ELEM, holding plain data (no fds or kernel objects).
bool Walkable(uint32_t type) {
  switch (type) {
    case BPF_MAP_TYPE_HASH:
    case BPF_MAP_TYPE_ARRAY:
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
    case BPF_MAP_TYPE_LRU_HASH:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_LPM_TRIE:
      return true;
    default:
      return false;
  }
}

// Possible CPUs (the kernel sizes per-CPU values by them): "0-N" or a list in
// /sys/devices/system/cpu/possible.
Result<int> PossibleCpus() {
  FILE* f = fopen("/sys/devices/system/cpu/possible", "re");
  if (!f) return Errno("open /sys/devices/system/cpu/possible");
  char buf[256] = {};
  bool ok = fgets(buf, sizeof(buf), f) != nullptr;
  fclose(f);
  if (!ok) return Err("read /sys/devices/system/cpu/possible");
  int highest = -1;
  for (char* tok = strtok(buf, ",\n"); tok; tok = strtok(nullptr, ",\n")) {
    const char* dash = strchr(tok, '-');
    int hi = atoi(dash ? dash + 1 : tok);
    if (hi > highest) highest = hi;
  }
  if (highest < 0) return Err("no cpu in /sys/devices/system/cpu/possible");
  return highest + 1;
}

Result<uint32_t> ValueStride(uint32_t type, uint32_t value_size) {
  if (!PerCpu(type)) return value_size;
  ASSIGN_OR_RETURN(int cpus, PossibleCpus());
  return ((value_size + 7) / 8 * 8) * static_cast<uint32_t>(cpus);
}

}  // namespace

Result<void> DumpBpfMap(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  bpf_map_info info{};
  bpf_attr attr{};
  attr.info.bpf_fd = static_cast<uint32_t>(p.local);
  attr.info.info_len = sizeof(info);
  attr.info.info = reinterpret_cast<uint64_t>(&info);
  if (Bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) < 0)
    return Errno("pid %d fd %d: BPF_OBJ_GET_INFO_BY_FD", p.pid, p.fd);
  auto refuse = [&](const std::string& why) {
    return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: bpf map %u (type %u, \"%s\"): %s",
                     p.pid, p.fd, info.id, info.type, info.name, why.c_str());
  };
  if (!Walkable(info.type))
    return refuse("this map type holds no elements a key walk reaches or objects (fds, "
                  "programs, sockets) a dump cannot carry");
  if (info.btf_id || info.btf_key_type_id || info.btf_value_type_id || info.btf_vmlinux_value_type_id)
    return refuse("the map has BTF (its BTF object is not dumped)");
  if (info.ifindex) return refuse("the map is offloaded to a device");
  if (info.map_flags & BPF_F_WRONLY) return refuse("BPF_F_WRONLY: its elements cannot be read");
  if (info.map_flags & BPF_F_MMAPABLE)
    return refuse("BPF_F_MMAPABLE: its memory may be mapped and written behind the element walk");
  if (info.map_flags & BPF_F_INNER_MAP) return refuse("BPF_F_INNER_MAP");

  auto* m = e.mutable_bpfmap();
  m->set_map_type(info.type);
  m->set_key_size(info.key_size);
  m->set_value_size(info.value_size);
  m->set_max_entries(info.max_entries);
  m->set_map_flags(info.map_flags);
  m->set_name(info.name);
  m->set_map_extra(info.map_extra);
  m->set_map_id(info.id);
  m->set_frozen(p.info.Get("frozen") == "1");
  m->set_memlock(strtoull(p.info.Get("memlock").c_str(), nullptr, 10));
  ASSIGN_OR_RETURN(uint32_t stride, ValueStride(info.type, info.value_size));
  m->set_value_stride(stride);

  // Every element: keys from GET_NEXT_KEY (no key: the first), values by LOOKUP_ELEM. An LPM
  // trie or a hash walked while unchanged (the tree is frozen; no program of ours runs) gives
  // each key once.
  std::string data;
  std::string key(info.key_size, '\0'), next(info.key_size, '\0'), value(stride, '\0');
  bool first = true;
  uint32_t n = 0;
  for (;;) {
    bpf_attr a{};
    a.map_fd = static_cast<uint32_t>(p.local);
    a.key = first ? 0 : reinterpret_cast<uint64_t>(key.data());
    a.next_key = reinterpret_cast<uint64_t>(next.data());
    if (Bpf(BPF_MAP_GET_NEXT_KEY, &a) < 0) {
      if (errno == ENOENT) break;
      return Errno("pid %d fd %d: bpf map %u: BPF_MAP_GET_NEXT_KEY", p.pid, p.fd, info.id);
    }
    first = false;
    key = next;
    bpf_attr l{};
    l.map_fd = static_cast<uint32_t>(p.local);
    l.key = reinterpret_cast<uint64_t>(key.data());
    l.value = reinterpret_cast<uint64_t>(value.data());
    if (Bpf(BPF_MAP_LOOKUP_ELEM, &l) < 0) {
      if (errno == ENOENT) continue;  // an LRU element evicted under us: not there any more
      return Errno("pid %d fd %d: bpf map %u: BPF_MAP_LOOKUP_ELEM", p.pid, p.fd, info.id);
    }
    data += key;
    data += value;
    if (++n > info.max_entries && info.type != BPF_MAP_TYPE_LPM_TRIE)
      return refuse("the key walk returned more elements than max_entries");
  }
  if (n && (info.map_flags & BPF_F_RDONLY))
    return refuse("BPF_F_RDONLY with elements: they cannot be written again from user space");
  m->set_entries(n);
  if (!data.empty()) {
    ASSIGN_OR_RETURN(*m->mutable_data(), ctx.Blob(data.data(), data.size()));
  }
  return Ok();
}

Result<UniqueFd> OpenBpfMap(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::BpfMapFile& m = e.bpfmap();
  // Another description of the same map (opened again by id): the same new map.
  std::string key = StrFormat("bpfmap:%u", m.map_id());
  auto have = ctx.named_fds.find(key);
  if (have != ctx.named_fds.end()) {
    bpf_map_info info{};
    bpf_attr a{};
    a.info.bpf_fd = static_cast<uint32_t>(have->second);
    a.info.info_len = sizeof(info);
    a.info.info = reinterpret_cast<uint64_t>(&info);
    if (Bpf(BPF_OBJ_GET_INFO_BY_FD, &a) < 0) return Errno("BPF_OBJ_GET_INFO_BY_FD");
    bpf_attr g{};
    g.map_id = info.id;
    UniqueFd fd(static_cast<int>(Bpf(BPF_MAP_GET_FD_BY_ID, &g)));
    if (!fd) return Errno("BPF_MAP_GET_FD_BY_ID %u", info.id);
    return fd;
  }
  if (!Walkable(m.map_type()))
    return MakeError(ErrorKind::kBadImage, 0, "bpf map %u: type %u is not restorable", m.map_id(),
                     m.map_type());
  ASSIGN_OR_RETURN(uint32_t stride, ValueStride(m.map_type(), m.value_size()));
  if (stride != m.value_stride())
    return MakeError(ErrorKind::kUnsupported, 0,
                     "bpf map %u \"%s\": per-CPU values of %u bytes dumped, %u here (another "
                     "number of possible CPUs)",
                     m.map_id(), m.name().c_str(), m.value_stride(), stride);
  bpf_attr c{};
  c.map_type = m.map_type();
  c.key_size = m.key_size();
  c.value_size = m.value_size();
  c.max_entries = m.max_entries();
  c.map_flags = m.map_flags();
  c.map_extra = m.map_extra();
  // BPF_F_NUMA_NODE: node 0 (fdinfo and bpf_map_info do not tell the node; with one node it is
  // the only one).
  c.numa_node = 0;
  snprintf(c.map_name, sizeof(c.map_name), "%s", m.name().c_str());
  UniqueFd fd(static_cast<int>(Bpf(BPF_MAP_CREATE, &c)));
  if (!fd)
    return Errno("BPF_MAP_CREATE type %u key %u value %u max %u flags %#x \"%s\"", m.map_type(),
                 m.key_size(), m.value_size(), m.max_entries(), m.map_flags(), m.name().c_str());
  if (m.entries()) {
    ASSIGN_OR_RETURN(std::string data, ctx.ReadBlob(m.data()));
    const size_t one = static_cast<size_t>(m.key_size()) + stride;
    if (data.size() != one * m.entries())
      return MakeError(ErrorKind::kBadImage, 0, "bpf map %u: %zu bytes of data for %u elements",
                       m.map_id(), data.size(), m.entries());
    for (uint32_t i = 0; i < m.entries(); ++i) {
      const char* k = data.data() + one * i;
      bpf_attr u{};
      u.map_fd = static_cast<uint32_t>(fd.get());
      u.key = reinterpret_cast<uint64_t>(k);
      u.value = reinterpret_cast<uint64_t>(k + m.key_size());
      u.flags = BPF_ANY;
      if (Bpf(BPF_MAP_UPDATE_ELEM, &u) < 0)
        return Errno("bpf map %u \"%s\": BPF_MAP_UPDATE_ELEM element %u", m.map_id(),
                     m.name().c_str(), i);
    }
  }
  if (m.frozen()) {
    bpf_attr f{};
    f.map_fd = static_cast<uint32_t>(fd.get());
    if (Bpf(BPF_MAP_FREEZE, &f) < 0) return Errno("bpf map %u: BPF_MAP_FREEZE", m.map_id());
  }
  int keep = fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
  if (keep < 0) return Errno("dup bpf map fd");
  ASSIGN_OR_RETURN(int parked, ctx.Park(UniqueFd(keep)));
  ctx.KeepUntilPrepared(UniqueFd(parked));
  ctx.named_fds[key] = parked;
  return fd;
}

}  // namespace godwit::files
