#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "oa_log.h"
#include "oa_util.h"

int oa_file_read(const char *path, size_t max, oa_buf_t *out)
{
    int fd, rc = 0;
    char chunk[8192];
    ssize_t n;

    oa_buf_reset(out);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    for (;;) {
        n = read(fd, chunk, sizeof(chunk));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        if (out->len + (size_t)n > max) {
            rc = UV_EFBIG;
            break;
        }
        rc = oa_buf_append(out, chunk, (size_t)n);
        if (rc != 0)
            break;
    }
    close(fd);
    if (rc == 0 && out->data == NULL)
        rc = oa_buf_append(out, "", 0); /* an empty file still yields a valid empty string */
    return rc;
}

static int fsync_parent_dir(const char *path)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int fd, rc = 0;

    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        if ((size_t)(slash - path) >= sizeof(dir))
            return UV_ENAMETOOLONG;
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (fsync(fd) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

int oa_file_write_atomic(const char *path, const void *data, size_t len, int mode)
{
    char tmp[PATH_MAX];
    const char *p = data;
    int fd = -1, rc = 0;
    ssize_t n;

    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp))
        return UV_ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0)
        return -errno;
    /* The umask, or a leftover temporary file from an earlier process with our pid, must not decide the mode. */
    if (fchmod(fd, (mode_t)mode) != 0) {
        rc = -errno;
        goto out;
    }
    while (len > 0) {
        n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto out;
        }
        p += n;
        len -= (size_t)n;
    }
    if (fsync(fd) != 0) {
        rc = -errno;
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = -errno;
        goto out;
    }
    fd = -1;
    /* After the rename the new content is the file; the directory fsync makes the rename itself durable. */
    if (rename(tmp, path) != 0) {
        rc = -errno;
        goto out;
    }
    return fsync_parent_dir(path);

out:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

int oa_file_remove(const char *path)
{
    if (unlink(path) != 0)
        return errno == ENOENT ? 0 : -errno;
    return fsync_parent_dir(path);
}

char *oa_path_join(const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    char *p;

    while (dl > 0 && dir[dl - 1] == '/')
        dl--;
    p = malloc(dl + 1 + nl + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, dir, dl);
    p[dl] = '/';
    memcpy(p + dl + 1, name, nl + 1);
    return p;
}

/* A temp file of another live process (not ours) may be a write in progress and is kept. */
static bool stale_temp(const char *name, const char *base)
{
    size_t blen = strlen(base);
    const char *p = name;
    char *end;
    long pid;

    if (strncmp(p, base, blen) != 0 || strncmp(p + blen, ".tmp.", 5) != 0)
        return false;
    p += blen + 5;
    if (*p < '0' || *p > '9')
        return false;
    errno = 0;
    pid = strtol(p, &end, 10);
    if (errno != 0 || *end != '\0' || pid <= 0)
        return false;
    return pid == (long)getpid() || kill((pid_t)pid, 0) != 0;
}

void oa_file_remove_stale_temps(const char *dir, const char *const *bases, size_t n)
{
    struct dirent *e;
    DIR *dh;
    size_t i;

    dh = opendir(dir);
    if (dh == NULL)
        return;
    while ((e = readdir(dh)) != NULL) {
        char *path;

        for (i = 0; i < n && !stale_temp(e->d_name, bases[i]); i++)
            ;
        if (i == n)
            continue;
        path = oa_path_join(dir, e->d_name);
        if (path == NULL)
            break;
        if (unlink(path) == 0)
            OA_LOG(OA_LOG_INFO, "stale_temp_file_removed", OA_KV_STR("path", path));
        free(path);
    }
    closedir(dh);
}
