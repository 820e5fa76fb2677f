#include "dump/vma_iter.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <linux/bpf.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "common/log.h"

namespace godwit::dump {
namespace {

// Byte offset of member `name` in the struct or union type id, looking into anonymous members
// (vm_flags sits in an anonymous union); -1 if absent.
long MemberOffset(const btf* b, __u32 id, const char* name, long base = 0) {
  const btf_type* t = btf__type_by_id(b, id);
  if (t == nullptr || (!btf_is_struct(t) && !btf_is_union(t))) return -1;
  const btf_member* m = btf_members(t);
  for (int i = 0; i < btf_vlen(t); ++i, ++m) {
    long off = base + btf_member_bit_offset(t, i) / 8;
    const char* n = btf__name_by_offset(b, m->name_off);
    if (n != nullptr && *n != '\0') {
      if (strcmp(n, name) == 0) return off;
      continue;
    }
    int inner = btf__resolve_type(b, m->type);
    if (inner < 0) continue;
    long r = MemberOffset(b, static_cast<__u32>(inner), name, off);
    if (r >= 0) return r;
  }
  return -1;
}

bpf_insn Insn(__u8 code, __u8 dst, __u8 src, __s16 off, __s32 imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst;
  i.src_reg = src;
  i.off = off;
  i.imm = imm;
  return i;
}
bpf_insn MovReg(__u8 dst, __u8 src) { return Insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0); }
bpf_insn MovImm(__u8 dst, __s32 imm) { return Insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm); }
bpf_insn AddImm(__u8 dst, __s32 imm) { return Insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm); }
bpf_insn Load64(__u8 dst, __u8 src, __s16 off) {
  return Insn(BPF_LDX | BPF_MEM | BPF_DW, dst, src, off, 0);
}
bpf_insn Store64(__u8 dst, __u8 src, __s16 off) {
  return Insn(BPF_STX | BPF_MEM | BPF_DW, dst, src, off, 0);
}
bpf_insn JeqImm(__u8 dst, __s32 imm, __s16 off) {
  return Insn(BPF_JMP | BPF_JEQ | BPF_K, dst, 0, off, imm);
}
bpf_insn Call(__s32 fn) { return Insn(BPF_JMP | BPF_CALL, 0, 0, 0, fn); }
bpf_insn Exit() { return Insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }

}  // namespace

std::unique_ptr<VmaIter> VmaIter::Load() {
  btf* b = btf__load_vmlinux_btf();
  if (b == nullptr) {
    LOG_DEBUG("vma iterator: no kernel BTF: smaps is read instead");
    return nullptr;
  }
  long off_start = -1, off_end = -1, off_flags = -1;
  int target = btf__find_by_name_kind(b, "bpf_iter_task_vma", BTF_KIND_FUNC);
  int vma = btf__find_by_name_kind(b, "vm_area_struct", BTF_KIND_STRUCT);
  if (vma > 0) {
    off_start = MemberOffset(b, vma, "vm_start");
    off_end = MemberOffset(b, vma, "vm_end");
    off_flags = MemberOffset(b, vma, "vm_flags");
  }
  btf__free(b);
  if (target <= 0 || off_start < 0 || off_end < 0 || off_flags < 0 || off_flags > 32767) {
    LOG_DEBUG("vma iterator: this kernel's BTF lacks bpf_iter_task_vma or vm_area_struct's "
              "vm_start/vm_end/vm_flags: smaps is read instead");
    return nullptr;
  }
  // ctx: struct bpf_iter__task_vma { meta; task; vma; } (8 bytes each); meta->seq at 0.
  // Writes {vm_start, vm_end, vm_flags} per VMA with bpf_seq_write.
  const bpf_insn prog[] = {
      MovReg(6, 1),                                  // r6 = ctx
      Load64(7, 6, 16),                              // r7 = ctx->vma
      JeqImm(7, 0, 12),                              // no vma (the end): to r0 = 0
      Load64(2, 7, static_cast<__s16>(off_start)),   // r2 = vma->vm_start
      Store64(10, 2, -24),
      Load64(2, 7, static_cast<__s16>(off_end)),     // r2 = vma->vm_end
      Store64(10, 2, -16),
      Load64(2, 7, static_cast<__s16>(off_flags)),   // r2 = vma->vm_flags
      Store64(10, 2, -8),
      Load64(1, 6, 0),                               // r1 = ctx->meta
      Load64(1, 1, 0),                               // r1 = meta->seq
      MovReg(2, 10),
      AddImm(2, -24),                                // r2 = the record on the stack
      MovImm(3, 24),
      Call(BPF_FUNC_seq_write),
      MovImm(0, 0),
      Exit(),
  };
  std::string log(16384, '\0');
  LIBBPF_OPTS(bpf_prog_load_opts, o);
  o.expected_attach_type = BPF_TRACE_ITER;
  o.attach_btf_id = static_cast<__u32>(target);
  o.log_buf = log.data();
  o.log_size = static_cast<__u32>(log.size());
  o.log_level = 1;
  int fd = bpf_prog_load(BPF_PROG_TYPE_TRACING, "godwit_vmas", "GPL", prog,
                         sizeof(prog) / sizeof(prog[0]), &o);
  if (fd < 0) {
    LOG_DEBUG("vma iterator: loading the program: %s: %s; smaps is read instead",
              strerror(errno), log.c_str());
    return nullptr;
  }
  auto it = std::unique_ptr<VmaIter>(new VmaIter());
  it->prog_.reset(fd);
  return it;
}

VmaIter* VmaIter::Shared() {
  static std::unique_ptr<VmaIter> shared = Load();
  return shared.get();
}

Result<std::vector<RawVma>> VmaIter::Read(pid_t pid) const {
  bpf_iter_link_info info{};
  info.task.tid = static_cast<__u32>(pid);  // that thread only: its mm's VMAs once
  LIBBPF_OPTS(bpf_link_create_opts, lo);
  lo.iter_info = &info;
  lo.iter_info_len = sizeof(info);
  UniqueFd link(bpf_link_create(prog_.get(), 0, BPF_TRACE_ITER, &lo));
  if (!link) return Errno("pid %d: attach the VMA iterator", pid);
  UniqueFd iter(bpf_iter_create(link.get()));
  if (!iter) return Errno("pid %d: start the VMA iterator", pid);
  std::vector<RawVma> out;
  std::vector<char> buf(64 * 1024);
  std::string pending;
  // No process has more VMAs than vm.max_map_count: past that the iterator is going round (seen
  // with a few thousand VMAs, zdtm maps06: it never ended and the dump died of bad_alloc); the
  // caller reads smaps instead.
  static const size_t max_bytes = [] {
    unsigned long long maps = 65530;
    if (FILE* f = fopen("/proc/sys/vm/max_map_count", "re")) {
      if (fscanf(f, "%llu", &maps) != 1) maps = 65530;
      fclose(f);
    }
    return static_cast<size_t>(maps + 16) * 24;
  }();
  for (;;) {
    ssize_t n = read(iter.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("pid %d: read the VMA iterator", pid);
    if (n == 0) break;
    pending.append(buf.data(), static_cast<size_t>(n));
    if (pending.size() > max_bytes)
      return MakeError(ErrorKind::kGeneric, 0,
                       "pid %d: the VMA iterator returned more than vm.max_map_count VMAs", pid);
  }
  if (pending.size() % 24 != 0)
    return MakeError(ErrorKind::kGeneric, 0, "pid %d: VMA iterator returned %zu bytes", pid,
                     pending.size());
  out.resize(pending.size() / 24);
  memcpy(out.data(), pending.data(), pending.size());
  if (out.empty()) return MakeError(ErrorKind::kNotFound, ESRCH, "pid %d: no VMAs", pid);
  return out;
}

}  // namespace godwit::dump
