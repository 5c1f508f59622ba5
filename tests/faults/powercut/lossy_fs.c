/*
 * lossy_fs.c - an LD_PRELOAD shim that simulates a power cut's view of one directory.
 *
 * A SIGKILL is not a power cut: the kernel's page cache survives the process, so everything the
 * process wrote is still there after a crash. What survives a power cut is only what was made durable
 * with fsync and friends. This shim keeps that durable state as a *shadow* directory:
 *
 *   - fsync(fd) / fdatasync(fd) on a regular file under LOSSY_FS_DIR first calls the real sync, then
 *     copies the file's whole current content into LOSSY_FS_SHADOW (same relative path; written to a
 *     temporary name and renamed, so the shadow copy itself is replaced atomically), and only then
 *     returns to the caller. The caller never learns that a sync succeeded before the shadow has it.
 *   - sync() and syncfs(fd) copy every regular file under LOSSY_FS_DIR.
 *   - unlink/unlinkat/remove/rmdir and rename/renameat/renameat2 of paths under LOSSY_FS_DIR are
 *     mirrored in the shadow at once: metadata operations are treated as immediately durable.
 *   - A file that was never synced has no shadow copy; a file renamed or moved into the directory
 *     without being synced under its old name has none either.
 *   - fsync of a directory, sync_file_range (which makes no durability promise), write, pwrite,
 *     ftruncate and mmap writes change nothing in the shadow.
 *
 * A power cut is then: SIGKILL the process, replace LOSSY_FS_DIR's contents by the shadow's (skipping
 * "*.lossy-tmp.*" files left by a copy the kill interrupted), restart.
 *
 * Environment:
 *   LOSSY_FS_DIR     directory to watch (required; without it the shim only passes calls through)
 *   LOSSY_FS_SHADOW  directory that receives the durable copies (required with LOSSY_FS_DIR)
 *   LOSSY_FS_STATS   optional directory: counters are rewritten to <dir>/<pid>.stats after each event
 *   LOSSY_FS_DEBUG   optional: "1" logs every intercepted event to stderr
 *   LOSSY_FS_KILL_AT_SYNC  optional N: the N-th fsync/fdatasync of a watched file SIGKILLs the process
 *                    before that sync reaches the shadow: a power cut while a sync is in flight, the
 *                    moment when acknowledging too early would show
 *
 * If the shadow copy fails, the intercepted sync fails with EIO (and says why on stderr): the shim
 * never lets a caller believe in durability that the simulation does not have.
 *
 * Build: cc -shared -fPIC -O2 -o lossy_fs.so lossy_fs.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

static int g_enabled;
static int g_debug;
static char g_dir[PATH_MAX];
static size_t g_dir_len;
static char g_shadow[PATH_MAX];
static char g_stats[PATH_MAX];
static pthread_mutex_t g_mu = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static char g_buf[1 << 20];
static unsigned long g_kill_at;    /* LOSSY_FS_KILL_AT_SYNC, 0 = never */
static unsigned long g_file_syncs; /* fsync/fdatasync calls on watched regular files so far */

static struct {
    unsigned long fsync, fdatasync, sync, syncfs, sync_file_range;
    unsigned long snapshots, snapshot_bytes, dir_syncs, other_syncs;
    unsigned long unlinks, renames, errors;
} g_n;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static void (*real_sync)(void);
static int (*real_syncfs)(int);
static int (*real_sync_file_range)(int, off_t, off_t, unsigned int);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);
static int (*real_remove)(const char *);
static int (*real_rmdir)(const char *);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);

#define RESOLVE(name)                                                         \
    do {                                                                      \
        if (!real_##name) *(void **)(&real_##name) = dlsym(RTLD_NEXT, #name); \
    } while (0)

static void say(const char *fmt, ...) {
    char line[PATH_MAX * 2 + 256];
    int n = snprintf(line, sizeof line, "lossy_fs[%d]: ", (int)getpid());
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t ignored = write(2, line, (size_t)n);
    (void)ignored;
}

__attribute__((constructor)) static void lossy_init(void) {
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(sync);
    RESOLVE(syncfs);
    RESOLVE(sync_file_range);
    RESOLVE(unlink);
    RESOLVE(unlinkat);
    RESOLVE(remove);
    RESOLVE(rmdir);
    RESOLVE(rename);
    RESOLVE(renameat);
    RESOLVE(renameat2);
    const char *dir = getenv("LOSSY_FS_DIR");
    const char *shadow = getenv("LOSSY_FS_SHADOW");
    const char *stats = getenv("LOSSY_FS_STATS");
    const char *debug = getenv("LOSSY_FS_DEBUG");
    const char *kill_at = getenv("LOSSY_FS_KILL_AT_SYNC");
    g_debug = debug && *debug && strcmp(debug, "0") != 0;
    if (!dir || !*dir) return;
    if (!shadow || !*shadow || !realpath(dir, g_dir) || !realpath(shadow, g_shadow)) {
        say("LOSSY_FS_DIR=%s / LOSSY_FS_SHADOW=%s must both exist; shim NOT active", dir, shadow ? shadow : "");
        return;
    }
    g_dir_len = strlen(g_dir);
    if (stats && *stats) snprintf(g_stats, sizeof g_stats, "%s", stats);
    if (kill_at && *kill_at) g_kill_at = strtoul(kill_at, NULL, 10);
    g_enabled = 1;
    if (g_debug) say("watching %s, shadow %s", g_dir, g_shadow);
}

/* snprintf that reports truncation as an error (ENAMETOOLONG) instead of cutting a path short. */
__attribute__((format(printf, 3, 4))) static int fmt(char *out, size_t size, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(out, size, format, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= size) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* The path relative to the watched directory ("" for the directory itself), or NULL if outside. */
static const char *relative(const char *abs) {
    if (strncmp(abs, g_dir, g_dir_len) != 0) return NULL;
    if (abs[g_dir_len] == '\0') return abs + g_dir_len;
    if (abs[g_dir_len] != '/') return NULL;
    return abs + g_dir_len + 1;
}

/* The file an fd refers to; fails for files already unlinked. */
static int fd_path(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n < 0) return -1;
    out[n] = '\0';
    static const char deleted[] = " (deleted)";
    size_t dl = sizeof deleted - 1;
    if ((size_t)n > dl && strcmp(out + n - dl, deleted) == 0) return -1;
    return 0;
}

/* Absolute path with the parent directory resolved (the last component may not exist). */
static int abs_path(int dirfd, const char *path, char *out) {
    char joined[PATH_MAX * 2];
    if (!path) return -1;
    if (path[0] == '/') {
        snprintf(joined, sizeof joined, "%s", path);
    } else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base)) return -1;
        } else if (fd_path(dirfd, base) != 0) {
            return -1;
        }
        snprintf(joined, sizeof joined, "%s/%s", base, path);
    }
    size_t len = strlen(joined);
    while (len > 1 && joined[len - 1] == '/') joined[--len] = '\0';
    char *slash = strrchr(joined, '/');
    char parent[PATH_MAX];
    if (slash == joined) return fmt(out, PATH_MAX, "%s", joined);
    *slash = '\0';
    if (!realpath(joined, parent)) snprintf(parent, sizeof parent, "%s", joined);
    return fmt(out, PATH_MAX, "%s/%s", parent, slash + 1);
}

static int shadow_of(const char *rel, char *out) { return fmt(out, PATH_MAX, "%s%s%s", g_shadow, *rel ? "/" : "", rel); }

static void make_parents(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + strlen(g_shadow) + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = '\0';
        mkdir(tmp, 0755);
        *p = '/';
    }
}

static void write_stats(void) {
    if (!g_stats[0]) return;
    char path[PATH_MAX], tmp[PATH_MAX];
    if (fmt(path, sizeof path, "%s/%d.stats", g_stats, (int)getpid()) != 0) return;
    if (fmt(tmp, sizeof tmp, "%s.tmp", path) != 0) return;
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f,
            "fsync %lu\nfdatasync %lu\nsync %lu\nsyncfs %lu\nsync_file_range %lu\nsnapshots %lu\n"
            "snapshot_bytes %lu\ndir_syncs %lu\nother_syncs %lu\nunlinks %lu\nrenames %lu\nerrors %lu\n",
            g_n.fsync, g_n.fdatasync, g_n.sync, g_n.syncfs, g_n.sync_file_range, g_n.snapshots,
            g_n.snapshot_bytes, g_n.dir_syncs, g_n.other_syncs, g_n.unlinks, g_n.renames, g_n.errors);
    fclose(f);
    real_rename(tmp, path);
}

/* Copy the regular file at `source` (opened read-only) to the shadow as `rel`. Caller holds g_mu. */
static int snapshot_path(const char *source, const char *rel) {
    char dst[PATH_MAX], tmp[PATH_MAX];
    if (shadow_of(rel, dst) != 0 || fmt(tmp, sizeof tmp, "%s.lossy-tmp.%d", dst, (int)getpid()) != 0) return -1;
    int in = open(source, O_RDONLY | O_CLOEXEC);
    if (in < 0) return -1;
    make_parents(dst);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return -1;
    }
    unsigned long total = 0;
    int ok = 1;
    /* copy_file_range copies inside the kernel; fall back to read/write where it is not supported */
    for (;;) {
        ssize_t n = copy_file_range(in, NULL, out, NULL, sizeof g_buf * 16, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n < 0 && total == 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP))
                break; /* nothing copied yet: use the portable loop below */
            ok = n == 0;
            goto copied;
        }
        total += (unsigned long)n;
    }
    for (;;) {
        ssize_t n = read(in, g_buf, sizeof g_buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            ok = 0;
            break;
        }
        if (n == 0) break;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, g_buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                ok = 0;
                break;
            }
            done += w;
        }
        if (!ok) break;
        total += (unsigned long)n;
    }
copied:
    close(in);
    if (close(out) != 0) ok = 0;
    if (!ok || real_rename(tmp, dst) != 0) {
        real_unlink(tmp);
        return -1;
    }
    g_n.snapshots++;
    g_n.snapshot_bytes += total;
    if (g_debug) say("durable: %s (%lu bytes)", rel, total);
    return 0;
}

/* After a successful real sync of fd: record its file's content as durable. */
static int after_sync(int fd, const char *what) {
    char path[PATH_MAX];
    if (fd_path(fd, path) != 0) return 0;
    const char *rel = relative(path);
    if (!rel) return 0;
    int rc = 0;
    int saved = errno;
    pthread_mutex_lock(&g_mu);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = -1;
    } else if (S_ISDIR(st.st_mode)) {
        g_n.dir_syncs++;
        if (g_debug) say("%s of directory %s: nothing to copy", what, *rel ? rel : ".");
    } else if (!S_ISREG(st.st_mode)) {
        g_n.other_syncs++;
    } else {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd); /* reopens the same file, read-only */
        rc = snapshot_path(proc, rel);
    }
    if (rc != 0) {
        g_n.errors++;
        say("%s(%d) on %s: could not record the durable copy (%s); failing with EIO", what, fd, path,
            strerror(errno));
    }
    write_stats();
    pthread_mutex_unlock(&g_mu);
    if (rc != 0) {
        errno = EIO;
        return -1;
    }
    errno = saved;
    return 0;
}

static void snapshot_tree(const char *abs, const char *rel) {
    DIR *d = opendir(abs);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char child[PATH_MAX], crel[PATH_MAX];
        if (fmt(child, sizeof child, "%s/%s", abs, e->d_name) != 0) continue;
        if (fmt(crel, sizeof crel, "%s%s%s", rel, *rel ? "/" : "", e->d_name) != 0) continue;
        struct stat st;
        if (lstat(child, &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            snapshot_tree(child, crel);
        } else if (S_ISREG(st.st_mode) && snapshot_path(child, crel) != 0) {
            g_n.errors++;
            say("sync: could not record the durable copy of %s (%s)", child, strerror(errno));
        }
    }
    closedir(d);
}

static void snapshot_all(void) {
    pthread_mutex_lock(&g_mu);
    snapshot_tree(g_dir, "");
    write_stats();
    pthread_mutex_unlock(&g_mu);
}

/* LOSSY_FS_KILL_AT_SYNC: count syncs of watched regular files; die at the chosen one, before it
   has made anything durable. */
static void maybe_die(int fd, const char *what) {
    char path[PATH_MAX];
    struct stat st;
    if (fd_path(fd, path) != 0 || !relative(path) || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    if (__atomic_add_fetch(&g_file_syncs, 1, __ATOMIC_SEQ_CST) != g_kill_at) return;
    pthread_mutex_lock(&g_mu); /* no snapshot is half done when the process goes */
    say("power cut during %s #%lu of %s (LOSSY_FS_KILL_AT_SYNC)", what, g_kill_at, path);
    kill(getpid(), SIGKILL);
    pause();
}

int fsync(int fd) {
    RESOLVE(fsync);
    if (g_enabled && g_kill_at) maybe_die(fd, "fsync");
    int rc = real_fsync(fd);
    if (!g_enabled) return rc;
    __atomic_add_fetch(&g_n.fsync, 1, __ATOMIC_RELAXED);
    return rc == 0 ? after_sync(fd, "fsync") : rc;
}

int fdatasync(int fd) {
    RESOLVE(fdatasync);
    if (g_enabled && g_kill_at) maybe_die(fd, "fdatasync");
    int rc = real_fdatasync(fd);
    if (!g_enabled) return rc;
    __atomic_add_fetch(&g_n.fdatasync, 1, __ATOMIC_RELAXED);
    return rc == 0 ? after_sync(fd, "fdatasync") : rc;
}

void sync(void) {
    RESOLVE(sync);
    real_sync();
    if (!g_enabled) return;
    __atomic_add_fetch(&g_n.sync, 1, __ATOMIC_RELAXED);
    snapshot_all();
}

int syncfs(int fd) {
    RESOLVE(syncfs);
    int rc = real_syncfs(fd);
    if (!g_enabled || rc != 0) return rc;
    __atomic_add_fetch(&g_n.syncfs, 1, __ATOMIC_RELAXED);
    int saved = errno;
    snapshot_all(); /* any fd on the same filesystem syncs it all; the watched dir is what matters */
    errno = saved;
    return rc;
}

int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags) {
    RESOLVE(sync_file_range);
    /* Starts or waits for writeback of a range but flushes neither metadata nor the disk's cache:
       it promises no durability, so it makes nothing durable here either. */
    if (g_enabled) __atomic_add_fetch(&g_n.sync_file_range, 1, __ATOMIC_RELAXED);
    return real_sync_file_range(fd, offset, nbytes, flags);
}

/* -- metadata: mirrored in the shadow as soon as the real call succeeds ------------------------- */

static void shadow_remove(const char *rel, int is_dir) {
    char s[PATH_MAX];
    if (shadow_of(rel, s) != 0) return;
    if (is_dir) {
        real_rmdir(s);
    } else {
        real_unlink(s);
    }
}

static int do_remove(int dirfd, const char *path, int flags, int kind /* 0 unlinkat, 1 remove, 2 rmdir */) {
    RESOLVE(unlink);
    RESOLVE(unlinkat);
    RESOLVE(remove);
    RESOLVE(rmdir);
    RESOLVE(rename);
    char abs[PATH_MAX];
    const char *rel = NULL;
    if (g_enabled && abs_path(dirfd, path, abs) == 0) rel = relative(abs);
    if (!rel || !*rel) {
        if (kind == 1) return real_remove(path);
        if (kind == 2) return real_rmdir(path);
        return dirfd == AT_FDCWD && flags == 0 ? real_unlink(path) : real_unlinkat(dirfd, path, flags);
    }
    pthread_mutex_lock(&g_mu);
    struct stat st;
    int is_dir = lstat(abs, &st) == 0 && S_ISDIR(st.st_mode);
    int rc;
    if (kind == 1) {
        rc = real_remove(path);
    } else if (kind == 2) {
        rc = real_rmdir(path);
    } else {
        rc = dirfd == AT_FDCWD && flags == 0 ? real_unlink(path) : real_unlinkat(dirfd, path, flags);
    }
    int saved = errno;
    if (rc == 0) {
        shadow_remove(rel, is_dir);
        g_n.unlinks++;
        if (g_debug) say("removed %s", rel);
        write_stats();
    }
    pthread_mutex_unlock(&g_mu);
    errno = saved;
    return rc;
}

int unlink(const char *path) { return do_remove(AT_FDCWD, path, 0, 0); }
int unlinkat(int dirfd, const char *path, int flags) { return do_remove(dirfd, path, flags, 0); }
int remove(const char *path) { return do_remove(AT_FDCWD, path, 0, 1); }
int rmdir(const char *path) { return do_remove(AT_FDCWD, path, 0, 2); }

static int do_rename(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags,
                     int kind /* 0 rename, 1 renameat, 2 renameat2 */) {
    RESOLVE(rename);
    RESOLVE(renameat);
    RESOLVE(renameat2);
    RESOLVE(unlink);
    RESOLVE(rmdir);
    char a[PATH_MAX], b[PATH_MAX];
    const char *ra = NULL, *rb = NULL;
    if (g_enabled && abs_path(olddirfd, oldpath, a) == 0) ra = relative(a);
    if (g_enabled && abs_path(newdirfd, newpath, b) == 0) rb = relative(b);
    if (ra && !*ra) ra = NULL; /* renaming the watched directory itself is not modelled */
    if (rb && !*rb) rb = NULL;
    int watched = ra || rb;
    if (watched) pthread_mutex_lock(&g_mu);
    int rc;
    if (kind == 0) {
        rc = real_rename(oldpath, newpath);
    } else if (kind == 1) {
        rc = real_renameat(olddirfd, oldpath, newdirfd, newpath);
    } else if (real_renameat2) {
        rc = real_renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
    } else {
        errno = ENOSYS;
        rc = -1;
    }
    int saved = errno;
    if (watched && rc == 0) {
        char sa[PATH_MAX], sb[PATH_MAX];
        if (ra && shadow_of(ra, sa) != 0) ra = NULL;
        if (rb && shadow_of(rb, sb) != 0) rb = NULL;
        struct stat st;
        if (ra && rb && (flags & RENAME_EXCHANGE)) {
            char tmp[PATH_MAX + 64];
            snprintf(tmp, sizeof tmp, "%s.lossy-tmp.%d", sb, (int)getpid()); /* sb < PATH_MAX: fits */
            int had_a = lstat(sa, &st) == 0, had_b = lstat(sb, &st) == 0;
            if (had_b) real_rename(sb, tmp);
            if (had_a) real_rename(sa, sb);
            if (had_b) real_rename(tmp, sa);
        } else if (ra && rb) {
            if (lstat(sa, &st) == 0) {
                make_parents(sb);
                real_rename(sa, sb); /* the durable copy moves with its name */
            } else if (lstat(sb, &st) == 0) {
                /* the new name now holds a file that was never synced: nothing durable under it */
                S_ISDIR(st.st_mode) ? real_rmdir(sb) : real_unlink(sb);
            }
        } else if (ra) {
            if (lstat(sa, &st) == 0) S_ISDIR(st.st_mode) ? real_rmdir(sa) : real_unlink(sa);
        } else if (rb && !(flags & RENAME_EXCHANGE)) {
            /* moved in from outside: its content was never synced under the watch */
            if (lstat(sb, &st) == 0) S_ISDIR(st.st_mode) ? real_rmdir(sb) : real_unlink(sb);
        }
        g_n.renames++;
        if (g_debug) say("renamed %s -> %s", ra ? ra : oldpath, rb ? rb : newpath);
        write_stats();
    }
    if (watched) pthread_mutex_unlock(&g_mu);
    errno = saved;
    return rc;
}

int rename(const char *oldpath, const char *newpath) { return do_rename(AT_FDCWD, oldpath, AT_FDCWD, newpath, 0, 0); }

int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath) {
    return do_rename(olddirfd, oldpath, newdirfd, newpath, 0, 1);
}

int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return do_rename(olddirfd, oldpath, newdirfd, newpath, flags, 2);
}
