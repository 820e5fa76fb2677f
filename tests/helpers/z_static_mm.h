/* Memory modes of z_static (issue 3, "Memory"), included by z_static.c after its helpers: ports
 * of CRIU zdtm static maps02, mlock_setuid, grow_map*, thp*, shm*, memfd seals and the VMA shapes
 * (partly written private file pages, MAP_NORESERVE, PROT_NONE guards, mremap, MADV_DONTNEED
 * holes, mprotect splits). mm_modes() returns -1 for a mode that is not one of these. */
#include <linux/memfd.h>

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif

/* CRIU's get_smaps_bits: the mmap-visible flags and the advice bits of the VMA holding addr. */
struct smaps_bits {
  unsigned long flags, madv;
  int found;
};
static struct smaps_bits smaps_bits(void* where) {
  struct smaps_bits b = {0, 0, 0};
  char line[1024];
  unsigned long s = 0, e = 0, w = (unsigned long)where;
  FILE* f = fopen("/proc/self/smaps", "r");
  while (f && fgets(line, sizeof line, f)) {
    unsigned long a, z;
    if (sscanf(line, "%lx-%lx ", &a, &z) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      s = a;
      e = z;
    }
    if (strncmp(line, "VmFlags:", 8) || w < s || w >= e) continue;
    b.found = 1;
    for (char* t = strtok(line + 8, " \n"); t; t = strtok(NULL, " \n")) {
#define TOK(x) (t[0] == x[0] && t[1] == x[1])
      if (TOK("gd")) b.flags |= MAP_GROWSDOWN;
      else if (TOK("lo")) b.flags |= MAP_LOCKED;
      else if (TOK("nr")) b.flags |= MAP_NORESERVE;
      else if (TOK("ht")) b.flags |= MAP_HUGETLB;
      else if (TOK("dp")) b.flags |= MAP_DROPPABLE;
      else if (TOK("lf")) b.flags |= 1ul << 40;
      else if (TOK("sl")) b.flags |= 1ul << 41;
      else if (TOK("sr")) b.madv |= 1ul << MADV_SEQUENTIAL;
      else if (TOK("rr")) b.madv |= 1ul << MADV_RANDOM;
      else if (TOK("dc")) b.madv |= 1ul << MADV_DONTFORK;
      else if (TOK("dd")) b.madv |= 1ul << MADV_DONTDUMP;
      else if (TOK("mg")) b.madv |= 1ul << MADV_MERGEABLE;
      else if (TOK("hg")) b.madv |= 1ul << MADV_HUGEPAGE;
      else if (TOK("nh")) b.madv |= 1ul << MADV_NOHUGEPAGE;
      else if (TOK("wf")) b.madv |= 1ul << MADV_WIPEONFORK;
#undef TOK
    }
    break;
  }
  if (f) fclose(f);
  return b;
}
/* The VmFlags of the VMA holding addr (restored VMAs may merge with neighbours, so not by start). */
static const char* vmflags_in(void* addr) {
  static char flags[512];
  char line[512];
  unsigned long s = 0, e = 0, w = (unsigned long)addr;
  FILE* f = fopen("/proc/self/smaps", "r");
  flags[0] = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long a, z;
    if (sscanf(line, "%lx-%lx ", &a, &z) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      s = a;
      e = z;
    }
    if (w >= s && w < e && !strncmp(line, "VmFlags:", 8)) {
      snprintf(flags, sizeof flags, "%s", line + 8);
      break;
    }
  }
  if (f) fclose(f);
  return flags;
}
/* The permissions of the VMA holding addr. */
static const char* perms_in(void* addr) {
  static char p[8];
  char line[512];
  unsigned long w = (unsigned long)addr;
  FILE* f = fopen("/proc/self/maps", "r");
  p[0] = 0;
  while (f && fgets(line, sizeof line, f)) {
    unsigned long s, e;
    char pr[8];
    if (sscanf(line, "%lx-%lx %7s", &s, &e, pr) == 3 && s <= w && w < e) {
      snprintf(p, sizeof p, "%s", pr);
      break;
    }
  }
  if (f) fclose(f);
  return p;
}
/* The [start, end) of the maps entry holding addr (0 if none). */
static unsigned long vma_start(void* addr, unsigned long* end) {
  char line[512];
  unsigned long w = (unsigned long)addr, r = 0;
  FILE* f = fopen("/proc/self/maps", "r");
  while (f && fgets(line, sizeof line, f)) {
    unsigned long s, e;
    if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s <= w && w < e) {
      r = s;
      if (end) *end = e;
      break;
    }
  }
  if (f) fclose(f);
  return r;
}
static long smaps_kb(void* addr, const char* field) {
  char line[512];
  unsigned long s = 0, e = 0, w = (unsigned long)addr;
  long v = -1;
  FILE* f = fopen("/proc/self/smaps", "r");
  while (f && fgets(line, sizeof line, f)) {
    unsigned long a, z;
    if (sscanf(line, "%lx-%lx ", &a, &z) == 2 && strchr(line, '-') < strchr(line, ' ')) {
      s = a;
      e = z;
      continue;
    }
    if (w >= s && w < e && !strncmp(line, field, strlen(field)) && line[strlen(field)] == ':') {
      v = atol(line + strlen(field) + 1);
      break;
    }
  }
  if (f) fclose(f);
  return v;
}

/* maps02 (CRIU): every kind of advice and mmap flag on its own VMA; all bits equal after the
 * restore, plus the behaviour of wipe-on-fork. */
static int m_mm_madv(void) {
  enum { N = 14 };
  const size_t n = 4 * 4096;
  struct {
    int mflags, adv;
    char* p;
    struct smaps_bits b;
  } m[N] = {
      {MAP_PRIVATE | MAP_ANONYMOUS, MADV_DONTFORK},
      {MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, MADV_SEQUENTIAL},
      {MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, MADV_DONTDUMP},
      {MAP_PRIVATE | MAP_ANONYMOUS, MADV_HUGEPAGE},
      {MAP_PRIVATE | MAP_ANONYMOUS, MADV_NOHUGEPAGE},
      {MAP_PRIVATE | MAP_ANONYMOUS, MADV_MERGEABLE},
      {MAP_PRIVATE | MAP_ANONYMOUS, MADV_WIPEONFORK},
      {MAP_PRIVATE | MAP_ANONYMOUS, MADV_RANDOM},
      {MAP_SHARED | MAP_ANONYMOUS, MADV_DONTFORK},
      {MAP_SHARED | MAP_ANONYMOUS, MADV_RANDOM},
      {MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, MADV_DONTDUMP},
      {MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, MADV_NORMAL},
      {MAP_DROPPABLE | MAP_ANONYMOUS, MADV_NORMAL},
      {MAP_PRIVATE | MAP_ANONYMOUS, -1 /* mseal */},
  };
  for (int i = 0; i < N; ++i) {
    m[i].p = mmap(NULL, n, PROT_READ | PROT_WRITE, m[i].mflags, -1, 0);
    if (m[i].p == MAP_FAILED && (m[i].mflags & MAP_DROPPABLE)) { /* older kernel */
      m[i].p = NULL;
      continue;
    }
    SETUP(m[i].p != MAP_FAILED);
    if (m[i].adv >= 0 && madvise(m[i].p, n, m[i].adv) != 0) {
      SETUP(errno == EINVAL); /* advice this kernel lacks */
    }
    if (m[i].adv < 0) SETUP(syscall(462, m[i].p, n, 0) == 0);
    if (!(m[i].mflags & MAP_DROPPABLE)) fill(m[i].p, n, 40 + i);
    m[i].b = smaps_bits(m[i].p);
    SETUP(m[i].b.found);
  }
  ready_and_wait();
  for (int i = 0; i < N; ++i) {
    if (!m[i].p) continue;
    struct smaps_bits b = smaps_bits(m[i].p);
    CHECK(b.found, "vma %d (%p) is gone", i, m[i].p);
    CHECK(b.flags == m[i].b.flags, "vma %d: flags %#lx, were %#lx: VmFlags%s", i, b.flags,
          m[i].b.flags, vmflags_in(m[i].p));
    CHECK(b.madv == m[i].b.madv, "vma %d: advice %#lx, was %#lx: VmFlags%s", i, b.madv,
          m[i].b.madv, vmflags_in(m[i].p));
    if (!(m[i].mflags & MAP_DROPPABLE)) CHECK(same(m[i].p, n, 40 + i), "vma %d: data", i);
  }
  /* Wipe-on-fork still wipes; a sealed VMA still refuses munmap. */
  int pfd[2];
  SETUP(pipe(pfd) == 0);
  pid_t c = zfork();
  if (c == 0) {
    char z = m[6].p[100] == 0;
    _exit(write(pfd[1], &z, 1) == 1 ? 0 : 1);
  }
  char z = 0;
  CHECK(read(pfd[0], &z, 1) == 1 && z == 1, "MADV_WIPEONFORK: the child saw the data");
  CHECK(reap(c) == 0, "child");
  CHECK(munmap(m[13].p, n) != 0 && errno == EPERM, "mseal: munmap of the sealed VMA worked");
  return 0;
}

/* mlock_setuid / mlock2: mlock, MAP_LOCKED, mlock2(MLOCK_ONFAULT) with a few pages touched, and
 * mlockall(MCL_FUTURE): locked again after the restore, the same VmLck, new mappings locked. */
static int m_mm_mlock(void) {
  const size_t n = 16 * 4096;
  char* a = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char* b = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED, -1, 0);
  char* c = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char* d = mmap(NULL, n, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(a != MAP_FAILED && b != MAP_FAILED && c != MAP_FAILED && d != MAP_FAILED);
  fill(a, n, 50);
  fill(b, n, 51);
  SETUP(mlock(a, n) == 0);
  SETUP(mlock2(c, n, MLOCK_ONFAULT) == 0);
  c[0] = 'c';
  c[5 * 4096] = 'C';
  SETUP(mlock(d, n) == 0); /* read-only, never written */
  SETUP(mlockall(MCL_FUTURE | MCL_ONFAULT) == 0);
  long before = status_field("VmLck");
  long rss_c = smaps_kb(c, "Rss");
  ready_and_wait();
  CHECK(same(a, n, 50) && same(b, n, 51), "data");
  CHECK(c[0] == 'c' && c[5 * 4096] == 'C', "onfault data");
  CHECK(strstr(vmflags_in(a), " lo"), "mlock lost: VmFlags%s", vmflags_in(a));
  CHECK(strstr(vmflags_in(b), " lo"), "MAP_LOCKED lost: VmFlags%s", vmflags_in(b));
  CHECK(strstr(vmflags_in(c), " lo") && strstr(vmflags_in(c), " lf"), "MLOCK_ONFAULT lost: VmFlags%s",
        vmflags_in(c));
  CHECK(smaps_kb(c, "Rss") == rss_c, "onfault region Rss %ld kB, was %ld (populated)",
        smaps_kb(c, "Rss"), rss_c);
  CHECK(strstr(vmflags_in(d), " lo") && !strcmp(perms_in(d), "r--p"), "read-only locked: %s VmFlags%s",
        perms_in(d), vmflags_in(d));
  CHECK(status_field("VmLck") == before, "VmLck %ld kB, was %ld", status_field("VmLck"), before);
  char* e = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(e != MAP_FAILED && strstr(vmflags_in(e), " lo") && strstr(vmflags_in(e), " lf"),
        "mlockall(MCL_FUTURE|MCL_ONFAULT) lost: a new mapping has VmFlags%s", vmflags_in(e));
  SETUP(munlockall() == 0);
  char* g = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(g != MAP_FAILED && !strstr(vmflags_in(g), " lo"), "munlockall: VmFlags%s", vmflags_in(g));
  return 0;
}

/* mlock_setuid: locked, then the process becomes an unprivileged user (no CAP_IPC_LOCK, a
 * small RLIMIT_MEMLOCK): still locked after the restore. */
static int m_mm_mlock_setuid(void) {
  const size_t n = 69632;
  char* p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(p != MAP_FAILED);
  fill(p, n, 52);
  SETUP(mlock(p, n) == 0);
  SETUP(setgid(18943) == 0 && setuid(18943) == 0);
  ready_and_wait();
  CHECK(getuid() == 18943, "uid %d", getuid());
  CHECK(smaps_bits(p).flags & MAP_LOCKED, "not locked after the restore: VmFlags%s", vmflags_in(p));
  CHECK(same(p, n, 52), "data");
  return 0;
}

/* grow_map, grow_map02, grow_map03: MAP_GROWSDOWN mappings keep VM_GROWSDOWN, their data and
 * their ability to grow (touching the page below extends the VMA); one split by mprotect, and two
 * growsdown VMAs one page apart. */
static int m_mm_grow(void) {
  const size_t pg = 4096;
  /* Room below for growth: the stack guard gap (256 pages by default) must stay free. */
  char* area = mmap(NULL, 2048 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(area != MAP_FAILED);
  SETUP(munmap(area, 2048 * pg) == 0);
  char* g = mmap(area + 1200 * pg, 3 * pg, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_GROWSDOWN, -1, 0);
  SETUP(g == area + 1200 * pg);
  g[0] = 'x';
  g[pg] = 'y';
  g[2 * pg] = 'z';
  /* grow_map02: split in three by mprotect of the middle page. */
  char* s = mmap(area + 1900 * pg, 3 * pg, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_GROWSDOWN, -1, 0);
  SETUP(s == area + 1900 * pg);
  s[0] = 'a';
  s[pg] = 'b';
  s[2 * pg] = 'c';
  SETUP(mprotect(s + pg, pg, PROT_READ) == 0);
  /* grow_map03: two one-page growsdown VMAs with a one-page hole. */
  char* h1 = mmap(area + 5 * pg, pg, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_GROWSDOWN, -1, 0);
  char* h2 = mmap(area + 3 * pg, pg, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_GROWSDOWN, -1, 0);
  SETUP(h1 == area + 5 * pg && h2 == area + 3 * pg);
  h1[0] = 1;
  h2[0] = 2;
  SETUP(strstr(vmflags_in(g), " gd") && strstr(vmflags_in(s + 2 * pg), " gd"));
  ready_and_wait();
  CHECK(strstr(vmflags_in(g), " gd"), "VM_GROWSDOWN lost: VmFlags%s", vmflags_in(g));
  CHECK(g[0] == 'x' && g[pg] == 'y' && g[2 * pg] == 'z', "data");
  CHECK(s[0] == 'a' && s[pg] == 'b' && s[2 * pg] == 'c', "split data");
  CHECK(!strcmp(perms_in(s + pg), "r--p") && strstr(vmflags_in(s), " gd") &&
            strstr(vmflags_in(s + 2 * pg), " gd"), "split: %s VmFlags%s", perms_in(s + pg), vmflags_in(s));
  CHECK(h1[0] == 1 && h2[0] == 2 && strstr(vmflags_in(h1), " gd") && strstr(vmflags_in(h2), " gd"),
        "two growsdown VMAs");
  /* Grows: a write just below extends the VMA down (no SIGSEGV). */
  g[-1] = 'w';
  g[-(long)pg - 1] = 'v';
  unsigned long end = 0;
  CHECK(vma_start(g - 1, &end) == (unsigned long)(g - 2 * pg) && end == (unsigned long)(g + 3 * pg),
        "did not grow: the VMA holding %p starts at %#lx", g - 1, vma_start(g - 1, NULL));
  CHECK(g[0] == 'x' && g[-1] == 'w', "data after growing");
  return 0;
}

/* grow_map as CRIU has it: a growsdown VMA grown by one page, a VMA mapped over its old guard
 * area, a second growsdown VMA right below that; after the restore the middle one goes, the
 * first keeps both pages, the second grows. */
static int m_mm_grow_map(void) {
  const size_t pg = 4096;
  /* 10 pages with free room below them (the guard gap, 1 MiB by default, must stay clear for
   * growing). */
  char* area = mmap(NULL, pg * 1024, PROT_NONE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  SETUP(area != MAP_FAILED && munmap(area, pg * 1024) == 0);
  char* start = area + pg * 1000;
  char* fake = mmap(start + pg * 5, pg, PROT_READ | PROT_WRITE,
                    MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED | MAP_GROWSDOWN, -1, 0);
  SETUP(fake != MAP_FAILED);
  fake[0] = 'c';
  *(fake - 1) = 'b';
  char* t = mmap(start + pg * 3, pg, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED,
                 -1, 0);
  char* gd = mmap(start + pg * 2, pg, PROT_READ | PROT_WRITE,
                  MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED | MAP_GROWSDOWN, -1, 0);
  SETUP(t != MAP_FAILED && gd != MAP_FAILED);
  ready_and_wait();
  CHECK(munmap(t, pg) == 0, "munmap");
  CHECK(fake[0] == 'c' && *(fake - 1) == 'b', "%c %c", fake[0], *(fake - 1));
  gd[0] = 'z';
  *(gd - 1) = 'x';
  CHECK(gd[0] == 'z' && *(gd - 1) == 'x', "grow");
  return 0;
}

/* thp, thp_disable: THP advice per VMA and the contents of a THP-backed region (huge pages
 * again after the restore when the kernel gave them before). */
static int m_mm_thp(void) {
  const size_t huge = 2 << 20;
  char* raw = mmap(NULL, 5 * huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(raw != MAP_FAILED);
  char* p = (char*)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
  char* q = p + 2 * huge;
  SETUP(madvise(p, 2 * huge, MADV_HUGEPAGE) == 0 && madvise(q, huge, MADV_NOHUGEPAGE) == 0);
  fill(p, 2 * huge, 60);
  fill(q, huge, 61);
  long thp_before = smaps_kb(p, "AnonHugePages");
  struct smaps_bits bp = smaps_bits(p), bq = smaps_bits(q);
  ready_and_wait();
  CHECK(same(p, 2 * huge, 60) && same(q, huge, 61), "data");
  struct smaps_bits ap = smaps_bits(p), aq = smaps_bits(q);
  CHECK(ap.madv == bp.madv && ap.flags == bp.flags, "hg VMA: VmFlags%s", vmflags_in(p));
  CHECK(aq.madv == bq.madv && aq.flags == bq.flags, "nh VMA: VmFlags%s", vmflags_in(q));
  if (thp_before > 0)
    CHECK(smaps_kb(p, "AnonHugePages") > 0, "no huge pages after the restore (%ld kB before)",
          thp_before);
  CHECK(smaps_kb(q, "AnonHugePages") == 0, "huge pages in the MADV_NOHUGEPAGE VMA");
  return 0;
}

/* shm with IPC_RMID: the segment dies with the dumped process; the restore creates it again with
 * the same id and contents, attached in the parent and its child (still shared between them),
 * and removed again (SHM_DEST). */
static int m_mm_shm_rmid(void) {
  const size_t n = 3 * 4096 + 100; /* not page aligned (shm-unaligned) */
  int id = shmget(IPC_PRIVATE, n, IPC_CREAT | 0600);
  SETUP(id >= 0);
  char* p = shmat(id, NULL, 0);
  SETUP(p != (void*)-1);
  fill(p, n, 70);
  SETUP(shmctl(id, SHM_LOCK, NULL) == 0);
  SETUP(shmctl(id, IPC_RMID, NULL) == 0);
  int pfd[2];
  SETUP(pipe(pfd) == 0);
  pid_t c = zfork();
  SETUP(c >= 0);
  if (c == 0) {
    wait_usr2();
    char b;
    if (read(pfd[0], &b, 1) != 1) _exit(2);
    _exit(p[7] == 'Q' ? 0 : 3); /* the parent's write, through the segment */
  }
  ready_and_wait();
  CHECK(same(p, n, 70), "data");
  struct shmid_ds ds;
  CHECK(shmctl(id, IPC_STAT, &ds) == 0, "IPC_STAT %d", id);
  CHECK(ds.shm_nattch == 2, "nattch %lu, want 2", (unsigned long)ds.shm_nattch);
  CHECK(ds.shm_perm.mode & SHM_DEST, "not removed again (mode %#o)", ds.shm_perm.mode);
  CHECK(ds.shm_segsz == n, "size %zu", (size_t)ds.shm_segsz);
  CHECK(ds.shm_perm.mode & SHM_LOCKED, "SHM_LOCK lost (mode %#o)", ds.shm_perm.mode);
  p[7] = 'Q';
  SETUP(kill(c, SIGUSR2) == 0 && write(pfd[1], "x", 1) == 1);
  CHECK(reap(c) == 0, "the child does not see the parent's write: not one segment");
  return 0;
}

/* shm with a key whose segment the test removes between dump and restore: created again with the
 * same id, key, mode and contents; writes reach it. */
static int m_mm_shm_key(void) {
  const size_t n = 5 * 4096;
  key_t key = 0x4d4d0000 | (getpid() & 0xffff);
  int id = shmget(key, n, IPC_CREAT | IPC_EXCL | 0640);
  SETUP(id >= 0);
  FILE* f = fopen(path_in("shmid"), "w");
  fprintf(f, "%d\n", id);
  fclose(f);
  char* p = shmat(id, NULL, 0);
  SETUP(p != (void*)-1);
  fill(p, n, 71);
  SETUP(mprotect(p, n, PROT_READ) == 0); /* attached read-write, read-only now */
  ready_and_wait();
  CHECK(!strcmp(perms_in(p), "r--s"), "perms %s", perms_in(p));
  CHECK(mprotect(p, n, PROT_READ | PROT_WRITE) == 0, "the segment cannot become writable again");
  CHECK(same(p, n, 71), "data");
  struct shmid_ds ds;
  CHECK(shmctl(id, IPC_STAT, &ds) == 0, "IPC_STAT %d", id);
  CHECK(ds.shm_perm.__key == key, "key %#x, want %#x", ds.shm_perm.__key, key);
  CHECK((ds.shm_perm.mode & 0777) == 0640, "mode %#o", ds.shm_perm.mode);
  CHECK(ds.shm_nattch == 1, "nattch %lu", (unsigned long)ds.shm_nattch);
  CHECK(shmget(key, 0, 0) == id, "the key names another segment");
  char* q = shmat(id, NULL, SHM_RDONLY);
  CHECK(q != (void*)-1, "attach again");
  p[9] = 'K';
  CHECK(q[9] == 'K', "the restored mapping is not the segment");
  shmctl(id, IPC_RMID, NULL);
  return 0;
}

/* A SysV segment mapped in part (its first and last pages unmapped after shmat): the middle is
 * the segment again after the restore, counted once in nattch, and shmdt at the original attach
 * address still detaches it. */
static int m_mm_shm_partial(void) {
  const size_t pg = 4096;
  int id = shmget(IPC_PRIVATE, 4 * pg, IPC_CREAT | 0600);
  SETUP(id >= 0);
  FILE* f = fopen(path_in("shmid"), "w");
  fprintf(f, "%d\n", id);
  fclose(f);
  char* p = shmat(id, NULL, 0);
  SETUP(p != (void*)-1);
  fill(p, 4 * pg, 72);
  SETUP(munmap(p, pg) == 0 && munmap(p + 3 * pg, pg) == 0);
  ready_and_wait();
  char want[4 * 4096];
  fill(want, sizeof want, 72);
  CHECK(!memcmp(p + pg, want + pg, 2 * pg), "data");
  struct shmid_ds ds;
  CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_nattch == 1, "nattch %lu",
        (unsigned long)ds.shm_nattch);
  char* q = shmat(id, NULL, 0);
  CHECK(q != (void*)-1, "attach again");
  p[pg + 5] = 'M';
  CHECK(q[pg + 5] == 'M' && !memcmp(q, want, pg), "the restored part is not the segment");
  CHECK(shmdt(p) == 0, "shmdt at the original attach address");
  CHECK(shmctl(id, IPC_STAT, &ds) == 0 && ds.shm_nattch == 1, "nattch after shmdt %lu",
        (unsigned long)ds.shm_nattch);
  shmctl(id, IPC_RMID, NULL);
  return 0;
}

/* memfd mappings with seals: a sealed (shrink, grow, write) memfd mapped read-only with its fd
 * closed, one with F_SEAL_FUTURE_WRITE mapped writable before the seal, one without sealing. */
static int m_mm_memfd_seals(void) {
  const size_t n = 3 * 4096;
  int a = memfd_create("sealed", MFD_ALLOW_SEALING);
  int b = memfd_create("future", MFD_ALLOW_SEALING);
  int c = memfd_create("plain", 0);
  SETUP(a >= 0 && b >= 0 && c >= 0);
  SETUP(ftruncate(a, n) == 0 && ftruncate(b, n) == 0 && ftruncate(c, n) == 0);
  char* pb = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, b, 0);
  char* pc = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, c, 0);
  SETUP(pb != MAP_FAILED && pc != MAP_FAILED);
  char buf[3 * 4096];
  fill(buf, n, 80);
  SETUP(pwrite(a, buf, n, 0) == (ssize_t)n);
  fill(pb, n, 81);
  fill(pc, n, 82);
  SETUP(fcntl(a, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) == 0);
  char* pa = mmap(NULL, n, PROT_READ, MAP_SHARED, a, 0);
  SETUP(pa != MAP_FAILED);
  SETUP(fcntl(b, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) == 0);
  /* memfd02: 6 bytes (not a page), mapped shared, then private (below it), the fd kept open. */
  int t = memfd_create("tiny", MFD_CLOEXEC);
  SETUP(t >= 0 && ftruncate(t, 6) == 0);
  char* ts = mmap(NULL, 6, PROT_READ | PROT_WRITE, MAP_SHARED, t, 0);
  SETUP(ts != MAP_FAILED && write(t, "write1", 6) == 6);
  char* tp = mmap(NULL, 6, PROT_READ | PROT_WRITE, MAP_PRIVATE, t, 0);
  SETUP(tp != MAP_FAILED);
  close(a);
  close(b);
  close(c);
  ready_and_wait();
  CHECK(same(pa, n, 80) && same(pb, n, 81) && same(pc, n, 82), "data");
  CHECK(!strncmp(ts, "write1", 6) && !strncmp(tp, "write1", 6), "6-byte memfd: %.6s %.6s", ts, tp);
  strcpy(ts, "write2");
  char tb[8] = {0};
  CHECK(pread(t, tb, 6, 0) == 6 && !strcmp(tb, "write2"), "6-byte memfd: fd reads %s", tb);
  CHECK(!strncmp(tp, "write2", 6), "6-byte memfd: private mapping reads %.6s", tp);
  strcpy(tp, "write3");
  CHECK(!strncmp(ts, "write2", 6), "private write reached the object");
  char mf[128];
  unsigned long e;
  unsigned long spa = vma_start(pa, &e);
  snprintf(mf, sizeof mf, "/proc/self/map_files/%lx-%lx", spa, e);
  int fa = open(mf, O_RDONLY);
  CHECK(fa >= 0, "open %s", mf);
  CHECK(fcntl(fa, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), "seals %#x",
        fcntl(fa, F_GET_SEALS));
  unsigned long spb = vma_start(pb, &e);
  snprintf(mf, sizeof mf, "/proc/self/map_files/%lx-%lx", spb, e);
  int fb = open(mf, O_RDONLY);
  CHECK(fb >= 0 && fcntl(fb, F_GET_SEALS) == (F_SEAL_FUTURE_WRITE | F_SEAL_SEAL), "future seals %#x",
        fcntl(fb, F_GET_SEALS));
  pb[3] = 'F'; /* the mapping made before the seal stays writable */
  CHECK(pread(fb, buf, 4, 0) == 4 && buf[3] == 'F', "write through the mapping");
  unsigned long spc = vma_start(pc, &e);
  snprintf(mf, sizeof mf, "/proc/self/map_files/%lx-%lx", spc, e);
  int fc = open(mf, O_RDONLY);
  CHECK(fc >= 0 && fcntl(fc, F_GET_SEALS) == F_SEAL_SEAL, "unsealable memfd: seals %#x",
        fcntl(fc, F_GET_SEALS));
  CHECK(!strcmp(perms_in(pa), "r--s"), "perms %s", perms_in(pa));
  return 0;
}

/* VMA shapes: a private file mapping with some pages written (the rest still the file's), a
 * MAP_NORESERVE region, PROT_NONE guards around a region, an mremap'ed (moved and grown) region,
 * MADV_DONTNEED holes, an mprotect-split private file mapping, shared anonymous memory shared
 * with a child. */
static int m_mm_shapes(void) {
  const size_t pg = 4096;
  /* Private file mapping, pages 1 and 3 written (3 only in part). */
  int fd = open(path_in("pfile"), O_RDWR | O_CREAT | O_TRUNC, 0600);
  SETUP(fd >= 0);
  char buf[8 * 4096];
  fill(buf, sizeof buf, 90);
  SETUP(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf);
  char* pf = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  SETUP(pf != MAP_FAILED);
  memset(pf + pg, 'W', pg);
  memset(pf + 3 * pg + 100, 'w', 50);
  /* The same file, split by mprotect: r-- / rw- (written) / r-x. */
  char* ps = mmap(NULL, 6 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, pg);
  SETUP(ps != MAP_FAILED);
  ps[2 * pg] = 'S';
  SETUP(mprotect(ps, 2 * pg, PROT_READ) == 0 && mprotect(ps + 4 * pg, 2 * pg, PROT_READ | PROT_EXEC) == 0);
  close(fd);
  /* MAP_NORESERVE with data. */
  char* nr = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                  -1, 0);
  SETUP(nr != MAP_FAILED);
  fill(nr + 4 * pg, 4 * pg, 91);
  /* PROT_NONE guards on both sides of a region (one mapping, three VMAs). */
  char* gr = mmap(NULL, 6 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(gr != MAP_FAILED);
  fill(gr + pg, 4 * pg, 92);
  SETUP(mprotect(gr, pg, PROT_NONE) == 0 && mprotect(gr + 5 * pg, pg, PROT_NONE) == 0);
  /* mremap: moved to a new place and grown. */
  char* mr = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(mr != MAP_FAILED);
  fill(mr, 4 * pg, 93);
  char* spot = mmap(NULL, 16 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(spot != MAP_FAILED && munmap(spot, 16 * pg) == 0);
  char* mr2 = mremap(mr, 4 * pg, 8 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, spot + 4 * pg);
  SETUP(mr2 == spot + 4 * pg);
  fill(mr2 + 4 * pg, 4 * pg, 94);
  /* MADV_DONTNEED holes. */
  char* dn = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(dn != MAP_FAILED);
  memset(dn, 'D', 8 * pg);
  SETUP(madvise(dn + 2 * pg, 2 * pg, MADV_DONTNEED) == 0 && madvise(dn + 7 * pg, pg, MADV_DONTNEED) == 0);
  /* maps_file_prot: a read-only shared file mapping (the file opened read-write), one page of it
   * mprotect'ed writable, the fd closed. */
  int pfdw = open(path_in("fprot"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  SETUP(pfdw >= 0 && ftruncate(pfdw, 2 * pg) == 0);
  char* ro = mmap(NULL, 2 * pg, PROT_READ, MAP_SHARED, pfdw, 0);
  SETUP(ro != MAP_FAILED && mprotect(ro + pg, pg, PROT_READ | PROT_WRITE) == 0);
  close(pfdw);
  /* Shared anonymous memory with a child. */
  char* sh = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  SETUP(sh != MAP_FAILED);
  fill(sh, 4 * pg, 95);
  int pfd[2];
  SETUP(pipe(pfd) == 0);
  pid_t c = zfork();
  SETUP(c >= 0);
  if (c == 0) {
    wait_usr2();
    char b;
    if (read(pfd[0], &b, 1) != 1) _exit(2);
    if (sh[10] != 'P') _exit(3);
    sh[11] = 'C';
    _exit(0);
  }
  ready_and_wait();
  for (int i = 0; i < 8; ++i) {
    if (i == 1) {
      for (size_t k = 0; k < pg; ++k) CHECK(pf[pg + k] == 'W', "written private file page");
    } else if (i == 3) {
      CHECK(pf[3 * pg + 100] == 'w' && pf[3 * pg + 149] == 'w' && pf[3 * pg + 99] == buf[3 * pg + 99] &&
                !memcmp(pf + 3 * pg + 150, buf + 3 * pg + 150, pg - 150), "partly written page");
    } else {
      CHECK(!memcmp(pf + i * pg, buf + i * pg, pg), "unwritten private file page %d", i);
    }
  }
  CHECK(!strcmp(perms_in(ps), "r--p") && !strcmp(perms_in(ps + 2 * pg), "rw-p") &&
            !strcmp(perms_in(ps + 4 * pg), "r-xp"), "split perms %s %s %s", perms_in(ps),
        perms_in(ps + 2 * pg), perms_in(ps + 4 * pg));
  CHECK(ps[2 * pg] == 'S' && !memcmp(ps, buf + pg, 2 * pg) && !memcmp(ps + 4 * pg, buf + 5 * pg, 2 * pg),
        "split file mapping data");
  CHECK(strstr(vmflags_in(nr), " nr"), "MAP_NORESERVE lost: VmFlags%s", vmflags_in(nr));
  CHECK(same(nr + 4 * pg, 4 * pg, 91) && nr[0] == 0 && nr[15 * pg] == 0, "noreserve data");
  CHECK(!strcmp(perms_in(gr), "---p") && !strcmp(perms_in(gr + pg), "rw-p") && !strcmp(perms_in(gr + 5 * pg), "---p"),
        "guards %s %s %s", perms_in(gr), perms_in(gr + pg), perms_in(gr + 5 * pg));
  CHECK(same(gr + pg, 4 * pg, 92), "guarded data");
  unsigned long e = 0;
  CHECK(vma_start(mr2, &e) <= (unsigned long)mr2 && e >= (unsigned long)(mr2 + 8 * pg), "mremap'ed VMA");
  CHECK(same(mr2, 4 * pg, 93) && same(mr2 + 4 * pg, 4 * pg, 94), "mremap'ed data");
  /* Holes stay holes (not populated): checked before reading them maps the zero page. */
  unsigned char inc[8];
  CHECK(mincore(dn, 8 * pg, inc) == 0, "mincore");
  for (int i = 0; i < 8; ++i)
    CHECK((inc[i] & 1) == !(i == 2 || i == 3 || i == 7), "page %d resident: %d", i, inc[i] & 1);
  for (int i = 0; i < 8; ++i) {
    char want = (i == 2 || i == 3 || i == 7) ? 0 : 'D';
    CHECK(dn[i * pg] == want && dn[i * pg + pg - 1] == want, "MADV_DONTNEED page %d: %d", i, dn[i * pg]);
  }
  CHECK(same(sh, 4 * pg, 95), "shared data");
  ro[pg] = 'r';
  CHECK(mprotect(ro, pg, PROT_READ | PROT_WRITE) == 0, "the read-only shared file mapping cannot "
        "become writable any more");
  ro[0] = 'o';
  int rf = open(path_in("fprot"), O_RDONLY);
  char two[2] = {0, 0};
  CHECK(rf >= 0 && pread(rf, two, 1, 0) == 1 && pread(rf, two + 1, 1, pg) == 1 && two[0] == 'o' &&
            two[1] == 'r', "writes did not reach the file: %d %d", two[0], two[1]);
  sh[10] = 'P';
  SETUP(kill(c, SIGUSR2) == 0 && write(pfd[1], "x", 1) == 1);
  CHECK(reap(c) == 0, "the child does not share the parent's memory");
  CHECK(sh[11] == 'C', "the parent does not see the child's write");
  return 0;
}

/* Guard regions (MADV_GUARD_INSTALL, as glibc 2.42 puts under thread stacks): inside a VMA
 * with data around them; after the restore they still fault and the data is there. */
static int touch_faults(volatile char* a) {
  pid_t c = zfork();
  if (c == 0) {
    signal(SIGSEGV, SIG_DFL);
    (void)*a;
    _exit(0);
  }
  return reap(c) == 128 + SIGSEGV;
}
static int m_mm_guard(void) {
  const size_t pg = 4096;
  char* p = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  SETUP(p != MAP_FAILED);
  fill(p, 8 * pg, 96);
  if (madvise(p + 2 * pg, 2 * pg, 102) != 0) exit(121); /* kernel before 6.13: the test skips */
  SETUP(madvise(p + 6 * pg, pg, 102) == 0);
  SETUP(touch_faults(p + 2 * pg) && touch_faults(p + 6 * pg));
  ready_and_wait();
  CHECK(touch_faults(p + 2 * pg) && touch_faults(p + 3 * pg + 100) && touch_faults(p + 6 * pg),
        "a guard page no longer faults");
  char want[8 * 4096];
  fill(want, sizeof want, 96);
  for (int i = 0; i < 8; ++i)
    if (i != 2 && i != 3 && i != 6) CHECK(!memcmp(p + i * pg, want + i * pg, pg), "page %d", i);
  CHECK(madvise(p, 8 * pg, 103 /* MADV_GUARD_REMOVE */) == 0 && p[2 * pg] == 0, "guard remove");
  return 0;
}

/* maps09/maps10: shared hugetlb memory (MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB) shared with a
 * child, and a private one: hugetlb again after the restore, same device, still shared. */
static unsigned long maps_dev(void* addr) {
  char line[512];
  unsigned long w = (unsigned long)addr, s, e, off, ino;
  unsigned maj, min;
  char pr[8];
  FILE* f = fopen("/proc/self/maps", "r");
  unsigned long dev = ~0UL;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "%lx-%lx %7s %lx %x:%x %lu", &s, &e, pr, &off, &maj, &min, &ino) == 7 &&
        s <= w && w < e) {
      dev = (unsigned long)maj << 20 | min;
      break;
    }
  if (f) fclose(f);
  return dev;
}
static int m_mm_hugetlb_shared(void) {
  const size_t huge = 2 << 20;
  char* s = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB,
                 -1, 0);
  if (s == MAP_FAILED) exit(121); /* no huge pages reserved: the test skips */
  char* p = mmap(NULL, huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (p == MAP_FAILED) exit(121);
  fill(s, 2 * huge, 97);
  fill(p, huge, 98);
  unsigned long ds = maps_dev(s), dp = maps_dev(p);
  int pfd[2];
  SETUP(pipe(pfd) == 0);
  pid_t c = zfork();
  SETUP(c >= 0);
  if (c == 0) {
    wait_usr2();
    char b;
    if (read(pfd[0], &b, 1) != 1) _exit(2);
    _exit(s[huge + 3] == 'H' && same(p, huge, 98) ? 0 : 3);
  }
  ready_and_wait();
  CHECK(same(s, 2 * huge, 97) && same(p, huge, 98), "data");
  CHECK(strstr(vmflags_in(s), " ht") && strstr(vmflags_in(p), " ht"), "not hugetlb: %s",
        vmflags_in(s));
  CHECK(maps_dev(s) == ds && maps_dev(p) == dp, "mapping dev changed");
  s[huge + 3] = 'H';
  SETUP(kill(c, SIGUSR2) == 0 && write(pfd[1], "x", 1) == 1);
  CHECK(reap(c) == 0, "the child does not share the hugetlb memory");
  return 0;
}

/* unlink_mmap02: private mappings of a deleted file that is also open: writes through the fd
 * after the restore show in the (unwritten) mapped pages. */
static int m_mm_unlink_mmap02(void) {
  const size_t pg = 4096;
  int fd = open(path_in("um02"), O_RDWR | O_CREAT | O_TRUNC, 0644);
  SETUP(fd >= 0 && pwrite(fd, "c", 1, 2 * pg - 1) == 1);
  char* a = mmap(NULL, pg, PROT_READ, MAP_PRIVATE, fd, 0);
  char* b = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, pg);
  SETUP(a != MAP_FAILED && b != MAP_FAILED && unlink(path_in("um02")) == 0);
  ready_and_wait();
  CHECK(pwrite(fd, "a", 1, 0) == 1 && pwrite(fd, "b", 1, pg) == 1, "write");
  CHECK(a[0] == 'a', "the mapping does not see the fd's write: two objects");
  CHECK(b[0] == 'b' && b[pg - 1] == 'c', "second mapping");
  return 0;
}

/* shm-hugetlb: SHM_HUGETLB segments of a size that is not a huge page multiple, one kept (attached
 * again) and one IPC_RMID'd (created again, hugetlb, removed again). */
static int m_mm_shm_hugetlb(void) {
  const size_t huge = 2 << 20, n = huge + 4096;
  int keep = shmget(IPC_PRIVATE, n, IPC_CREAT | SHM_HUGETLB | 0600);
  if (keep < 0) exit(121); /* no huge pages reserved: the test skips */
  FILE* f = fopen(path_in("shmid"), "w");
  fprintf(f, "%d\n", keep);
  fclose(f);
  int gone = shmget(IPC_PRIVATE, n, IPC_CREAT | SHM_HUGETLB | 0600);
  if (gone < 0) exit(121);
  char* a = shmat(keep, NULL, 0);
  char* b = shmat(gone, NULL, 0);
  SETUP(a != (void*)-1 && b != (void*)-1 && shmctl(gone, IPC_RMID, NULL) == 0);
  fill(a, n, 73);
  fill(b, n, 74);
  ready_and_wait();
  CHECK(same(a, n, 73) && same(b, n, 74), "data");
  CHECK(strstr(vmflags_in(a), " ht") && strstr(vmflags_in(b), " ht"), "not hugetlb: %s",
        vmflags_in(b));
  struct shmid_ds ds;
  CHECK(shmctl(keep, IPC_STAT, &ds) == 0 && ds.shm_segsz == n && ds.shm_nattch == 1, "kept");
  CHECK(shmctl(gone, IPC_STAT, &ds) == 0 && ds.shm_segsz == n && ds.shm_nattch == 1 &&
            (ds.shm_perm.mode & SHM_DEST), "created again: size %zu nattch %lu mode %#o",
        (size_t)ds.shm_segsz, (unsigned long)ds.shm_nattch, ds.shm_perm.mode);
  shmctl(keep, IPC_RMID, NULL);
  return 0;
}

static int mm_modes(const char* mode) {
  if (!strcmp(mode, "mm_shm_hugetlb")) return m_mm_shm_hugetlb();
  if (!strcmp(mode, "mm_unlink_mmap02")) return m_mm_unlink_mmap02();
  if (!strcmp(mode, "mm_hugetlb_shared")) return m_mm_hugetlb_shared();
  if (!strcmp(mode, "mm_guard")) return m_mm_guard();
  if (!strcmp(mode, "mm_madv")) return m_mm_madv();
  if (!strcmp(mode, "mm_mlock")) return m_mm_mlock();
  if (!strcmp(mode, "mm_grow")) return m_mm_grow();
  if (!strcmp(mode, "mm_grow_map")) return m_mm_grow_map();
  if (!strcmp(mode, "mm_mlock_setuid")) return m_mm_mlock_setuid();
  if (!strcmp(mode, "mm_thp")) return m_mm_thp();
  if (!strcmp(mode, "mm_shm_rmid")) return m_mm_shm_rmid();
  if (!strcmp(mode, "mm_shm_key")) return m_mm_shm_key();
  if (!strcmp(mode, "mm_shm_partial")) return m_mm_shm_partial();
  if (!strcmp(mode, "mm_memfd_seals")) return m_mm_memfd_seals();
  if (!strcmp(mode, "mm_shapes")) return m_mm_shapes();
  return -1;
}
