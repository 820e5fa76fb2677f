#include "restore/batch.h"

#include <cstring>

namespace godwit::restore {
namespace {

// Where the batch goes in the scratch area: above the arguments single calls put at its start
// (paths, structs: up to scratch() + 8 KiB).
constexpr uint64_t kCodeOffset = 16 << 10;
constexpr uint64_t kTableOffset = kCodeOffset + 256;
constexpr size_t kEntry = 64;  // nr, six arguments, the result
constexpr size_t kMaxCalls = 512;

void Imm64(std::vector<uint8_t>* c, uint64_t v) {
  for (int i = 0; i < 8; ++i) c->push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// x86-64:
//   r12 = table; r13 = count
//   loop: if (r13 == 0) goto done
//         rax, rdi, rsi, rdx, r10, r8, r9 = table[0..6]; syscall; table[7] = rax
//         if (rax >= -4095 unsigned) goto done          // an error: stop there
//         r12 += 64; r13--; goto loop
//   done: int3
std::vector<uint8_t> BatchCode(uint64_t table, uint64_t count) {
  std::vector<uint8_t> c = {0x49, 0xBC};  // mov r12, table
  Imm64(&c, table);
  c.insert(c.end(), {0x49, 0xBD});  // mov r13, count
  Imm64(&c, count);
  const std::vector<uint8_t> body = {
      0x49, 0x8B, 0x04, 0x24,              // mov rax, [r12]
      0x49, 0x8B, 0x7C, 0x24, 0x08,        // mov rdi, [r12+8]
      0x49, 0x8B, 0x74, 0x24, 0x10,        // mov rsi, [r12+16]
      0x49, 0x8B, 0x54, 0x24, 0x18,        // mov rdx, [r12+24]
      0x4D, 0x8B, 0x54, 0x24, 0x20,        // mov r10, [r12+32]
      0x4D, 0x8B, 0x44, 0x24, 0x28,        // mov r8, [r12+40]
      0x4D, 0x8B, 0x4C, 0x24, 0x30,        // mov r9, [r12+48]
      0x0F, 0x05,                          // syscall
      0x49, 0x89, 0x44, 0x24, 0x38,        // mov [r12+56], rax
      0x48, 0x3D, 0x01, 0xF0, 0xFF, 0xFF,  // cmp rax, -4095
  };
  const std::vector<uint8_t> next = {
      0x49, 0x83, 0xC4, 0x40,  // add r12, 64
      0x49, 0xFF, 0xCD,        // dec r13
  };
  // loop: test r13, r13; jz done; body; jae done; next; jmp loop; done: int3
  const size_t loop_len = 3 + 2 + body.size() + 2 + next.size() + 2;
  c.insert(c.end(), {0x4D, 0x85, 0xED});  // test r13, r13
  c.push_back(0x74);                      // jz done
  c.push_back(static_cast<uint8_t>(loop_len - 5));
  c.insert(c.end(), body.begin(), body.end());
  c.push_back(0x73);  // jae done
  c.push_back(static_cast<uint8_t>(next.size() + 2));
  c.insert(c.end(), next.begin(), next.end());
  c.push_back(0xEB);  // jmp loop
  c.push_back(static_cast<uint8_t>(-static_cast<int>(loop_len)));
  c.push_back(0xCC);  // done: int3
  return c;
}

}  // namespace

void SyscallBatch::Add(std::string what, long nr, uint64_t a0, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, std::optional<uint64_t> expect) {
  calls_.push_back({std::move(what), nr, {a0, a1, a2, a3, a4, a5}, expect});
}

Result<void> SyscallBatch::Check(const Call& c, long rc) const {
  if (rc < 0 && rc > -4096)
    return MakeError(rc == -ENOENT ? ErrorKind::kNotFound : ErrorKind::kGeneric,
                     static_cast<int>(-rc), "%s: injected syscall %ld in %d", c.what.c_str(), c.nr,
                     r_->pid());
  if (c.expect && static_cast<uint64_t>(rc) != *c.expect)
    return Err("%s: injected syscall %ld in %d returned %#lx, not %#lx", c.what.c_str(), c.nr,
               r_->pid(), static_cast<unsigned long>(rc), static_cast<unsigned long>(*c.expect));
  return Ok();
}

Result<void> SyscallBatch::Flush() {
  std::vector<Call> calls;
  calls.swap(calls_);
  size_t done = 0;
  while (calls.size() - done > 1) {
    const size_t n = std::min(kMaxCalls, calls.size() - done);
    const uint64_t code = r_->scratch() + kCodeOffset, table = r_->scratch() + kTableOffset;
    if (kTableOffset + n * kEntry > r_->scratch_size()) break;
    std::vector<uint8_t> stub = BatchCode(table, n);
    std::vector<uint64_t> t(n * kEntry / 8);
    for (size_t i = 0; i < n; ++i) {
      const Call& c = calls[done + i];
      uint64_t* e = &t[i * kEntry / 8];
      e[0] = static_cast<uint64_t>(c.nr);
      memcpy(e + 1, c.args, sizeof(c.args));
      e[7] = static_cast<uint64_t>(-4095);  // "not run": the loop overwrites it
    }
    TRY(r_->Write(code, stub.data(), stub.size()));
    TRY(r_->Write(table, t.data(), t.size() * 8));
    ASSIGN_OR_RETURN(bool ran, r_->RunCode(code));
    if (!ran) break;  // one by one, below
    TRY(r_->Read(table, t.data(), t.size() * 8));
    for (size_t i = 0; i < n; ++i) {
      const Call& c = calls[done + i];
      long rc = static_cast<long>(t[i * kEntry / 8 + 7]);
      if (rc == -4095) return Err("%s: injected batch in %d stopped before it", c.what.c_str(),
                                  r_->pid());
      TRY(Check(c, rc));
    }
    done += n;
  }
  for (; done < calls.size(); ++done) {
    const Call& c = calls[done];
    ASSIGN_OR_RETURN(long rc, r_->RawSyscallIn(r_->tid(), c.nr, c.args));
    TRY(Check(c, rc));
  }
  return Ok();
}

}  // namespace godwit::restore
