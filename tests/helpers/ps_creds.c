/* Credentials across dump and restore: ps_creds creds READY_FD
 * Started as root, drops to uids 2000/2001/2002 (fs 2003), gids 1000/1001/1002 (fs 1003), groups
 * {1001, 1005, 1007}, keeps a few capabilities (different effective, permitted, inheritable and
 * ambient sets), trims the bounding set and leaves securebits KEEP_CAPS|NO_SETUID_FIXUP.
 *   ps_creds nnp READY_FD          no_new_privs only (stays root). */
#include "ps_common.h"

#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define BIT(c) (1ULL << (c))

static void get_caps(unsigned long long* eff, unsigned long long* prm, unsigned long long* inh) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  memset(d, 0, sizeof(d));
  SETUP(syscall(SYS_capget, &h, d) == 0);
  *eff = d[0].effective | ((unsigned long long)d[1].effective << 32);
  *prm = d[0].permitted | ((unsigned long long)d[1].permitted << 32);
  *inh = d[0].inheritable | ((unsigned long long)d[1].inheritable << 32);
}

static int set_caps(unsigned long long eff, unsigned long long prm, unsigned long long inh) {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2];
  d[0].effective = (unsigned)eff;
  d[1].effective = (unsigned)(eff >> 32);
  d[0].permitted = (unsigned)prm;
  d[1].permitted = (unsigned)(prm >> 32);
  d[0].inheritable = (unsigned)inh;
  d[1].inheritable = (unsigned)(inh >> 32);
  return (int)syscall(SYS_capset, &h, d);
}

static const unsigned long long kEff = BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE);
static const unsigned long long kPrm = BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_NET_RAW);
static const unsigned long long kInh = BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_NET_RAW);
static const int kDropped[] = {CAP_SYS_BOOT, CAP_MKNOD, CAP_SYS_MODULE, CAP_AUDIT_WRITE};

static int creds(const char* ready) {
  gid_t groups[] = {1001, 1005, 1007};
  SETUP(setgroups(3, groups) == 0);
  for (size_t i = 0; i < sizeof(kDropped) / sizeof(kDropped[0]); ++i)
    SETUP(prctl(PR_CAPBSET_DROP, kDropped[i], 0, 0, 0) == 0);
  SETUP(prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) == 0);
  /* Raw syscalls: glibc's set*id would broadcast to threads (there are none here anyway). */
  SETUP(syscall(SYS_setresgid, 1000, 1001, 1002) == 0);
  syscall(SYS_setfsgid, 1003);
  SETUP(syscall(SYS_setresuid, 2000, 2001, 2002) == 0);
  syscall(SYS_setfsuid, 2003);
  SETUP(set_caps(kEff, kPrm, kInh) == 0);
  SETUP(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) == 0);
  int dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);

  ps_ready_and_wait(ready);

  uid_t r, e, s;
  CHECK(getresuid(&r, &e, &s) == 0 && r == 2000 && e == 2001 && s == 2002, "uids %u %u %u", r, e,
        s);
  CHECK(setfsuid(-1) == 2003, "fsuid %d", setfsuid(-1));
  gid_t gr, ge, gs;
  CHECK(getresgid(&gr, &ge, &gs) == 0 && gr == 1000 && ge == 1001 && gs == 1002, "gids %u %u %u",
        gr, ge, gs);
  CHECK(setfsgid(-1) == 1003, "fsgid %d", setfsgid(-1));
  gid_t got[16];
  int n = getgroups(16, got);
  CHECK(n == 3 && got[0] == 1001 && got[1] == 1005 && got[2] == 1007, "%d groups", n);
  unsigned long long eff, prm, inh;
  get_caps(&eff, &prm, &inh);
  CHECK(eff == kEff && prm == kPrm && inh == kInh, "caps eff %#llx prm %#llx inh %#llx", eff, prm,
        inh);
  CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) == 1,
        "ambient NET_BIND_SERVICE");
  CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_RAW, 0, 0) == 0, "ambient NET_RAW");
  for (size_t i = 0; i < sizeof(kDropped) / sizeof(kDropped[0]); ++i)
    CHECK(prctl(PR_CAPBSET_READ, kDropped[i], 0, 0, 0) == 0, "cap %d in bounding set",
          kDropped[i]);
  CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) == 1, "CAP_SYS_ADMIN not in bounding set");
  int bits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
  CHECK(bits == (SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP), "securebits %#x", bits);
  CHECK(prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) == 1, "keepcaps");
  CHECK(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == dumpable, "dumpable %d, want %d",
        prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), dumpable);
  CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 0, "no_new_privs");
  /* The restored privileges work: CAP_KILL lets uid 2001 signal root's processes. */
  CHECK(kill(getppid(), 0) == 0, "kill(parent, 0) with CAP_KILL");
  return 0;
}

static int nnp(const char* ready) {
  SETUP(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0);
  ps_ready_and_wait(ready);
  CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs lost");
  CHECK(geteuid() == 0, "euid %u", geteuid());
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return 122;
  ps_init();
  if (strcmp(argv[1], "creds") == 0) return creds(argv[2]);
  if (strcmp(argv[1], "nnp") == 0) return nnp(argv[2]);
  return 123;
}
