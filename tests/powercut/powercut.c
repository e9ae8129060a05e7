/*
 * A power cut for one process, as an LD_PRELOAD library: every write to a file under
 * $UES_POWERCUT_ROOT goes to the real file as usual, and the library remembers which byte
 * ranges of which file are not yet synced. When the process syncs a file (fsync, fdatasync,
 * or a write on a file opened O_SYNC/O_DSYNC), those ranges and the file's size are copied
 * into the same path under $UES_POWERCUT_IMAGE. Renames and unlinks under the root are
 * applied to the image at once. So the image is, at every moment, what the disk would hold
 * after a power cut that loses every write not yet synced: kill the process, replace the
 * root with the image, and start again.
 *
 * The image is stricter than a real disk in one way (names of files never synced are lost)
 * and more lenient in one other (renames and unlinks are durable at once, without a
 * directory sync); byte ranges of a file synced later are copied as they are at the sync.
 *
 * Hand-written: no library interposes on file I/O this way, and wrapping SQLite's VFS and
 * RocksDB's Env separately would not cover the node's other files.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 65536
#define MAX_FILES 16384
#define MAX_RANGES 512

struct range {
    off_t start, end;
};

struct file {
    dev_t dev;
    ino_t ino;
    int used;
    size_t n;
    struct range r[MAX_RANGES];
};

/* What a file descriptor was found to be: 0 unknown, 1 a file under the root, 2 under the
 * root and opened O_SYNC/O_DSYNC, 3 anything else. Checked against the inode at every use. */
struct fdinfo {
    dev_t dev;
    ino_t ino;
    int kind;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char root[PATH_MAX];
static size_t root_len;
static char image[PATH_MAX];
static int ready = -1;
static struct fdinfo fds[MAX_FDS];
static struct file *files;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_unlink)(const char *);
static int (*real_unlinkat)(int, const char *, int);

static void init(void) {
    if (ready >= 0) return;
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_pwritev = dlsym(RTLD_NEXT, "pwritev");
    real_pwritev64 = dlsym(RTLD_NEXT, "pwritev64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_renameat = dlsym(RTLD_NEXT, "renameat");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_unlinkat = dlsym(RTLD_NEXT, "unlinkat");
    const char *r = getenv("UES_POWERCUT_ROOT");
    const char *i = getenv("UES_POWERCUT_IMAGE");
    files = calloc(MAX_FILES, sizeof(struct file));
    if (!r || !i || !files || strlen(r) + 2 > sizeof root || strlen(i) + 2 > sizeof image) {
        ready = 0;
        return;
    }
    snprintf(root, sizeof root, "%s/", r);
    root_len = strlen(root);
    snprintf(image, sizeof image, "%s", i);
    ready = 1;
}

/* The image path of a path under the root, or 0. */
static int image_path(const char *path, char *out, size_t cap) {
    if (strncmp(path, root, root_len) != 0) return 0;
    return snprintf(out, cap, "%s/%s", image, path + root_len) < (int)cap;
}

static int fd_path(int fd, char *out, size_t cap) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    if (n <= 0) return 0;
    out[n] = 0;
    return 1;
}

/* Absolute form of a path given to rename/unlink (relative to the working directory or to a
 * directory descriptor). */
static int absolute(int dirfd, const char *path, char *out, size_t cap) {
    char base[PATH_MAX];
    if (path[0] == '/') return snprintf(out, cap, "%s", path) < (int)cap;
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof base)) return 0;
    } else if (!fd_path(dirfd, base, sizeof base)) {
        return 0;
    }
    return snprintf(out, cap, "%s/%s", base, path) < (int)cap;
}

static void mkdirs(const char *path) {
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            mkdir(tmp, 0700);
            *p = '/';
        }
    }
}

static int kind_of(int fd, struct stat *st) {
    if (fd < 0 || fd >= MAX_FDS || fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) return 3;
    struct fdinfo *f = &fds[fd];
    if (f->kind && f->dev == st->st_dev && f->ino == st->st_ino) return f->kind;
    char path[PATH_MAX];
    int kind = 3;
    if (fd_path(fd, path, sizeof path) && strncmp(path, root, root_len) == 0) {
        int fl = fcntl(fd, F_GETFL);
        kind = (fl >= 0 && (fl & (O_SYNC | O_DSYNC))) ? 2 : 1;
    }
    f->dev = st->st_dev;
    f->ino = st->st_ino;
    f->kind = kind;
    return kind;
}

static struct file *file_of(const struct stat *st) {
    size_t h = ((size_t)st->st_ino * 2654435761u + (size_t)st->st_dev) % MAX_FILES;
    for (size_t k = 0; k < MAX_FILES; k++) {
        struct file *f = &files[(h + k) % MAX_FILES];
        if (!f->used) {
            f->used = 1;
            f->dev = st->st_dev;
            f->ino = st->st_ino;
            f->n = 0;
            return f;
        }
        if (f->dev == st->st_dev && f->ino == st->st_ino) return f;
    }
    return NULL;
}

/* Copies the file's unsynced ranges and its size into the image. Called with `mu` held. */
static void flush_file(int fd, struct stat *st) {
    struct file *f = file_of(st);
    char path[PATH_MAX], img[PATH_MAX], src[64];
    if (!fd_path(fd, path, sizeof path) || !image_path(path, img, sizeof img)) return;
    mkdirs(img);
    snprintf(src, sizeof src, "/proc/self/fd/%d", fd);
    int in = open(src, O_RDONLY | O_CLOEXEC);
    int out = open(img, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    struct stat now;
    if (in >= 0 && out >= 0 && fstat(in, &now) == 0) {
        static char buf[1 << 16];
        for (size_t k = 0; f && k < f->n; k++) {
            off_t end = f->r[k].end < now.st_size ? f->r[k].end : now.st_size;
            for (off_t at = f->r[k].start; at < end;) {
                size_t want = (size_t)(end - at) < sizeof buf ? (size_t)(end - at) : sizeof buf;
                ssize_t got = pread(in, buf, want, at);
                if (got <= 0) break;
                if (real_pwrite(out, buf, (size_t)got, at) != got) break;
                at += got;
            }
        }
        if (ftruncate(out, now.st_size) != 0) { /* the image keeps its old size */ }
    }
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    if (f) f->n = 0;
}

static void note(int fd, off_t start, ssize_t len) {
    if (len <= 0) return;
    init();
    if (ready != 1) return;
    int saved = errno;
    pthread_mutex_lock(&mu);
    struct stat st;
    int kind = kind_of(fd, &st);
    if (kind == 1 || kind == 2) {
        struct file *f = file_of(&st);
        off_t end = start + len;
        if (f) {
            struct range *last = f->n ? &f->r[f->n - 1] : NULL;
            if (last && start <= last->end && end >= last->start) {
                if (start < last->start) last->start = start;
                if (end > last->end) last->end = end;
            } else if (f->n < MAX_RANGES) {
                f->r[f->n].start = start;
                f->r[f->n].end = end;
                f->n++;
            } else {
                /* Too many ranges: one covering them all (copying more is what a disk may do). */
                for (size_t k = 0; k < f->n; k++) {
                    if (f->r[k].start < start) start = f->r[k].start;
                    if (f->r[k].end > end) end = f->r[k].end;
                }
                f->r[0].start = start;
                f->r[0].end = end;
                f->n = 1;
            }
        }
        if (kind == 2) flush_file(fd, &st);
    }
    pthread_mutex_unlock(&mu);
    errno = saved;
}

static void synced(int fd) {
    init();
    if (ready != 1) return;
    int saved = errno;
    pthread_mutex_lock(&mu);
    struct stat st;
    int kind = kind_of(fd, &st);
    if (kind == 1 || kind == 2) flush_file(fd, &st);
    pthread_mutex_unlock(&mu);
    errno = saved;
}

/* A write at the file position: what it wrote ends where the position is now. */
static ssize_t noted_at_position(int fd, ssize_t r) {
    if (r > 0 && ready == 1) {
        off_t end = lseek(fd, 0, SEEK_CUR);
        if (end >= r) note(fd, end - r, r);
    }
    return r;
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    return noted_at_position(fd, real_write(fd, buf, n));
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    init();
    return noted_at_position(fd, real_writev(fd, iov, cnt));
}

/* A write at an explicit offset. */
static ssize_t noted(int fd, off_t off, ssize_t r) {
    note(fd, off, r);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    init();
    return noted(fd, off, real_pwrite(fd, buf, n, off));
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    init();
    return noted(fd, off, real_pwrite64(fd, buf, n, off));
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    init();
    return noted(fd, off, real_pwritev(fd, iov, cnt, off));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) {
    init();
    return noted(fd, off, real_pwritev64(fd, iov, cnt, off));
}

int fsync(int fd) {
    init();
    synced(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    init();
    synced(fd);
    return real_fdatasync(fd);
}

static void renamed(const char *from, const char *to) {
    char a[PATH_MAX], b[PATH_MAX], ia[PATH_MAX], ib[PATH_MAX];
    if (!absolute(AT_FDCWD, from, a, sizeof a) || !absolute(AT_FDCWD, to, b, sizeof b)) return;
    int ha = image_path(a, ia, sizeof ia), hb = image_path(b, ib, sizeof ib);
    if (hb) {
        if (ha && access(ia, F_OK) == 0) {
            mkdirs(ib);
            real_rename(ia, ib);
        } else {
            /* The new name holds content never synced: nothing durable under it. */
            real_unlink(ib);
        }
    } else if (ha) {
        real_unlink(ia);
    }
}

/* After a call that succeeded: `then` under the lock, errno kept as the call left it. */
#define AFTER(call, then)                   \
    init();                                 \
    int r = (call);                         \
    if (r == 0 && ready == 1) {             \
        int saved = errno;                  \
        pthread_mutex_lock(&mu);            \
        then;                               \
        pthread_mutex_unlock(&mu);          \
        errno = saved;                      \
    }                                       \
    return r

int rename(const char *from, const char *to) {
    AFTER(real_rename(from, to), renamed(from, to));
}

static void renamed_at(int fromfd, const char *from, int tofd, const char *to) {
    char a[PATH_MAX], b[PATH_MAX];
    if (absolute(fromfd, from, a, sizeof a) && absolute(tofd, to, b, sizeof b)) renamed(a, b);
}

int renameat(int fromfd, const char *from, int tofd, const char *to) {
    AFTER(real_renameat(fromfd, from, tofd, to), renamed_at(fromfd, from, tofd, to));
}

static void unlinked(int dirfd, const char *path) {
    char a[PATH_MAX], ia[PATH_MAX];
    if (absolute(dirfd, path, a, sizeof a) && image_path(a, ia, sizeof ia)) real_unlink(ia);
}

int unlink(const char *path) {
    AFTER(real_unlink(path), unlinked(AT_FDCWD, path));
}

int unlinkat(int dirfd, const char *path, int flags) {
    AFTER(real_unlinkat(dirfd, path, flags), if (!(flags & AT_REMOVEDIR)) unlinked(dirfd, path));
}
