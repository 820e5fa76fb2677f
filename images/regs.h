// user_regs_struct <-> img::X86Regs, field by field: the one conversion between ptrace's register
// set and the image's, used by the dump (dump/core.cc) and the restore (restore/core.cc, threads).
// Header-only. The functions live in godwit::img next to the message they convert, so a caller in
// any namespace finds them by argument lookup (RegsToProto(regs, core.mutable_regs())).
#pragma once

#include <sys/user.h>

#include <cstring>

#include "proto/core.pb.h"

namespace godwit::img {

inline void RegsToProto(const user_regs_struct& r, X86Regs* p) {
  p->set_r15(r.r15);
  p->set_r14(r.r14);
  p->set_r13(r.r13);
  p->set_r12(r.r12);
  p->set_rbp(r.rbp);
  p->set_rbx(r.rbx);
  p->set_r11(r.r11);
  p->set_r10(r.r10);
  p->set_r9(r.r9);
  p->set_r8(r.r8);
  p->set_rax(r.rax);
  p->set_rcx(r.rcx);
  p->set_rdx(r.rdx);
  p->set_rsi(r.rsi);
  p->set_rdi(r.rdi);
  p->set_orig_rax(r.orig_rax);
  p->set_rip(r.rip);
  p->set_cs(r.cs);
  p->set_eflags(r.eflags);
  p->set_rsp(r.rsp);
  p->set_ss(r.ss);
  p->set_fs_base(r.fs_base);
  p->set_gs_base(r.gs_base);
  p->set_ds(r.ds);
  p->set_es(r.es);
  p->set_fs(r.fs);
  p->set_gs(r.gs);
}

inline user_regs_struct RegsFromProto(const X86Regs& p) {
  user_regs_struct r;
  memset(&r, 0, sizeof(r));
  r.r15 = p.r15();
  r.r14 = p.r14();
  r.r13 = p.r13();
  r.r12 = p.r12();
  r.rbp = p.rbp();
  r.rbx = p.rbx();
  r.r11 = p.r11();
  r.r10 = p.r10();
  r.r9 = p.r9();
  r.r8 = p.r8();
  r.rax = p.rax();
  r.rcx = p.rcx();
  r.rdx = p.rdx();
  r.rsi = p.rsi();
  r.rdi = p.rdi();
  r.orig_rax = p.orig_rax();
  r.rip = p.rip();
  r.cs = p.cs();
  r.eflags = p.eflags();
  r.rsp = p.rsp();
  r.ss = p.ss();
  r.fs_base = p.fs_base();
  r.gs_base = p.gs_base();
  r.ds = p.ds();
  r.es = p.es();
  r.fs = p.fs();
  r.gs = p.gs();
  return r;
}

}  // namespace godwit::img
