/* ovn-k8s-cni-overlay's front, as ovn_k8s.cni.install compiles it for the runtime.
 *
 * Kubelet starts the plugin once per call, and with the node daemon up the plugin
 * only forwards the call over the daemon's socket and copies the answer back
 * (ovn_k8s.cni.wire). A Python process spends 11-20 ms here just starting, which
 * is most of DEL's 25 ms budget; this does the forwarding in about a millisecond.
 *
 * VERSION it answers itself. Everything else is the Python plugin's
 * (ovn_k8s.cmd.cni), which this execs with the same environment and arguments,
 * stdin replayed when it was already read: any arguments (daemon, --help), no
 * daemon accepting on the socket (it then does the work in-process), a config
 * whose daemonSocket this scanner does not read as plainly as Python's json would,
 * and the error document when the daemon took the call and did not answer it.
 *
 * So a host that cannot run that Python (the plugin installed from a container by
 * the node DaemonSet) still has a working plugin while the daemon runs; when it
 * would need Python, the call gets error 11 (try again later) saying why.
 *
 * install.py prepends the #defines below, taken from the Python side's values.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#if !defined(FRONT_PYTHON) || !defined(FRONT_BOOT) || !defined(FRONT_DEFAULT_RUNDIR) \
    || !defined(FRONT_SOCKET_NAME) || !defined(FRONT_CHECK_TIMEOUT) \
    || !defined(FRONT_DAEMON_MARGIN) || !defined(FRONT_DAEMON_FAILED) \
    || !defined(FRONT_VERSION_INFO) || !defined(FRONT_SUPPORTED_VERSIONS) \
    || !defined(FRONT_CURRENT_VERSION)
#error "compile through ovn_k8s.cni.install, which defines the FRONT_* values"
#endif

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const void *data, size_t len)
{
    if (!len)
        return;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 8192;
        while (cap < b->len + len)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            fputs("ovn-k8s-cni-overlay: out of memory\n", stderr);
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static size_t skip_space(const char *p, size_t n, size_t i)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* The end of the JSON string whose body starts at `i` (the index of its closing
 * quote, or n), and whether the body holds anything but printable ASCII without
 * escapes: Python's json may read such a string differently from its bytes. */
static size_t string_end(const char *p, size_t n, size_t i, int *unplain)
{
    *unplain = 0;
    for (; i < n && p[i] != '"'; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\\' || c < 0x20 || c >= 0x7f) {
            *unplain = 1;
            if (c == '\\')
                i++;
        }
    }
    return i;
}

/* The config's top-level string `key` as Python's json reads it: 1 with *value set,
 * 0 for none (absent, not a string, empty), -1 when only Python can tell (escapes
 * or other than ASCII in a key or in the value, or not JSON as far as this scan
 * sees). */
static int top_level_string(const struct buf *in, const char *key, char **value)
{
    const char *p = in->data;
    size_t n = in->len, i = 0, keylen = strlen(key);
    int depth = 0, found = 0;
    char quoted[64];

    /* As the Python front for daemonSocket: without the quoted key it does not parse. */
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    if (!n || !memmem(p, n, quoted, keylen + 2))
        return 0;
    while (i < n) {
        if (p[i] == '{' || p[i] == '[') {
            depth++;
        } else if (p[i] == '}' || p[i] == ']') {
            depth--;
        } else if (p[i] == '"') {
            int unplain;
            size_t start = i + 1, end = string_end(p, n, start, &unplain);
            if (end >= n)
                break;
            size_t after = skip_space(p, n, end + 1);
            int is_key = depth == 1 && after < n && p[after] == ':';
            i = end;
            if (is_key && unplain) {
                found = -1;
            } else if (is_key && end - start == keylen && !memcmp(p + start, key, keylen)) {
                size_t v = skip_space(p, n, after + 1);
                free(*value);
                *value = NULL;
                found = 0;  /* the last one wins, as in Python's json */
                if (v < n && p[v] == '"') {
                    size_t vend = string_end(p, n, v + 1, &unplain);
                    if (vend >= n)
                        break;
                    if (unplain)
                        found = -1;
                    else if (vend > v + 1 && (*value = strndup(p + v + 1, vend - v - 1)))
                        found = 1;
                    i = vend;
                }
            }
        }
        i++;
    }
    /* Cut short (a string or an object left open): Python's json refuses it, and
     * the daemon it then goes to says why. */
    return i < n || depth ? -1 : found;
}

/* 0 once all of `data` is written to `fd`, else -1 (errno set). */
static int write_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
    }
    return 0;
}

/* The line at the head of `b` if it starts with `prefix`: what follows the prefix
 * into `line` (cut to `size`), and the line taken off `b`. 0 when there is none yet. */
static int take_line(struct buf *b, const char *prefix, char *line, size_t size)
{
    size_t plen = strlen(prefix);
    char *nl = b->len > plen ? memchr(b->data, '\n', b->len) : NULL;
    if (!nl || memcmp(b->data, prefix, plen))
        return 0;
    snprintf(line, size, "%.*s", (int)(nl - b->data - plen), b->data + plen);
    b->len -= (size_t)(nl + 1 - b->data);
    memmove(b->data, nl + 1, b->len);
    return 1;
}

static char *argv0;

static void json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if (*c < 0x20)
            printf("\\u%04x", *c);
        else
            putchar(*c);
    }
    putchar('"');
}

/* The cniVersion for an error document, as ovn_k8s.cni.spec.version_of picks it. */
static const char *error_version(const struct buf *in)
{
    static const char *supported[] = {FRONT_SUPPORTED_VERSIONS};
    char *version = NULL;
    if (top_level_string(in, "cniVersion", &version) == 1) {
        for (size_t i = 0; i < sizeof supported / sizeof *supported; i++) {
            if (!strcmp(version, supported[i]))
                return supported[i];
        }
    }
    return FRONT_CURRENT_VERSION;
}

/* The Python plugin in this process's place; with `in` (a call's stdin, already
 * read) its stdin is `in` again, and `why` says what it was needed for. */
_Noreturn static void python(char **args, int nargs, const struct buf *in, const char *why)
{
    if (in) {
        int fd = memfd_create("cni-stdin", 0);
        if (fd < 0 || write_all(fd, in->data, in->len) || lseek(fd, 0, SEEK_SET)
            || dup2(fd, 0) < 0) {
            perror("ovn-k8s-cni-overlay: replaying stdin");
            exit(1);
        }
        close(fd);  /* not 0: stdin was open, it has just been read */
    }
    char **argv = calloc((size_t)nargs + 7, sizeof *argv);
    if (!argv) {
        fputs("ovn-k8s-cni-overlay: out of memory\n", stderr);
        exit(1);
    }
    char *head[] = {FRONT_PYTHON, "-I", "-S", "-c", FRONT_BOOT, argv0};
    memcpy(argv, head, sizeof head);
    if (nargs)
        memcpy(argv + 6, args, (size_t)nargs * sizeof *args);
    execv(FRONT_PYTHON, argv);
    const char *error = strerror(errno);
    fprintf(stderr, "ovn-k8s-cni-overlay: cannot run %s: %s\n", FRONT_PYTHON, error);
    if (in) {
        /* The runtime reads stdout: a CNI error, which it retries. */
        char *msg = NULL;
        if (asprintf(&msg, "%s; and this host cannot run the plugin's Python (%s: %s)",
                     why ? why : "the call needs the Python plugin", FRONT_PYTHON, error) < 0)
            exit(1);
        printf("{\"cniVersion\": \"%s\", \"code\": 11, \"msg\": ", error_version(in));
        json_string(msg);
        puts("}");
    }
    exit(1);
}

_Noreturn static void no_daemon(const char *path, const struct buf *in)
{
    char *why = NULL;
    if (asprintf(&why, "no CNI daemon accepts calls on %s", path ? path : "?") < 0)
        why = NULL;
    python(NULL, 0, in, why);
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000LL + t.tv_nsec / 1000000;
}

/* Wait up to `ms` for `events` on `fd`: 0 when ready, else errno (ETIMEDOUT). */
static int ready(int fd, short events, long long ms)
{
    struct pollfd pfd = {.fd = fd, .events = events};
    long long deadline = now_ms() + ms;
    for (;;) {
        long long left = deadline - now_ms();
        int r = poll(&pfd, 1, left > 0 ? (int)(left > 1 << 30 ? 1 << 30 : left) : 0);
        if (r > 0)
            return 0;
        if (r == 0 && now_ms() >= deadline)
            return ETIMEDOUT;
        if (r < 0 && errno != EINTR)
            return errno;
    }
}

/* The exchange with the daemon once it accepted: 0 with *status and `out` set,
 * else a description of what went wrong in `why`. */
static int exchange(int sock, const struct buf *req, int *status, struct buf *out,
                    char *why, size_t whylen)
{
    long long timeout = (long long)(FRONT_CHECK_TIMEOUT * 1000);
    size_t sent = 0;
    int err;
    while (sent < req->len) {
        ssize_t n = send(sock, req->data + sent, req->len - sent, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += (size_t)n;
        } else if (errno == EAGAIN) {
            if ((err = ready(sock, POLLOUT, timeout)))
                goto failed;
        } else if (errno != EINTR) {
            err = errno;
            goto failed;
        }
    }
    shutdown(sock, SHUT_WR);
    for (;;) {
        char chunk[65536];
        ssize_t n = recv(sock, chunk, sizeof chunk, 0);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN) {
                err = errno;
                goto failed;
            }
            if ((err = ready(sock, POLLIN, timeout)))
                goto failed;
            continue;
        }
        put(out, chunk, (size_t)n);
        /* Once the daemon has checked the call it says how long the work may take. */
        char line[64];
        while (take_line(out, "wait ", line, sizeof line))
            timeout = (long long)((strtod(line, NULL) + FRONT_DAEMON_MARGIN) * 1000);
    }
    char line[64];
    if (!take_line(out, "exit ", line, sizeof line)) {
        snprintf(why, whylen, "ValueError: no exit status in the answer (%zu bytes)", out->len);
        return -1;
    }
    *status = atoi(line);
    return 0;
failed:
    snprintf(why, whylen, "%s: %s", err == ETIMEDOUT ? "TimeoutError" : "OSError",
             err == ETIMEDOUT ? "timed out" : strerror(err));
    return -1;
}

int main(int argc, char **argv)
{
    argv0 = argv[0] ? argv[0] : "ovn-k8s-cni-overlay";
    const char *command = getenv("CNI_COMMAND");
    int version = argc == 1 && command && !strcmp(command, "VERSION");
    if (!version && (argc > 1 || !command || (strcmp(command, "ADD") && strcmp(command, "DEL")
                                              && strcmp(command, "CHECK"))))
        python(argv + 1, argc - 1, NULL, NULL);

    struct buf in = {0};
    for (;;) {
        char chunk[65536];
        ssize_t n = read(0, chunk, sizeof chunk);
        if (n == 0)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("ovn-k8s-cni-overlay: reading stdin");
            return 1;
        }
        put(&in, chunk, (size_t)n);
    }
    if (version) {  /* read all the same: a runtime writing to a closed pipe would fail */
        fputs(FRONT_VERSION_INFO, stdout);
        return 0;
    }

    char *path = NULL;
    switch (top_level_string(&in, "daemonSocket", &path)) {
    case -1:
        python(NULL, 0, &in, "the config's daemonSocket is one only Python reads");
        break;
    case 0: {
        const char *rundir = getenv("OVS_RUNDIR");
        if (!rundir || !*rundir)
            rundir = FRONT_DEFAULT_RUNDIR;
        const char *sep = rundir[strlen(rundir) - 1] == '/' ? "" : "/";
        if (asprintf(&path, "%s%s%s", rundir, sep, FRONT_SOCKET_NAME) < 0)
            path = NULL;
        break;
    }
    }

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    /* A path too long for a socket has no daemon on it (Python's connect fails too). */
    if (!path || strlen(path) >= sizeof addr.sun_path || sock < 0)
        no_daemon(path, &in);
    memcpy(addr.sun_path, path, strlen(path) + 1);
    /* Absent, refused, stale or its backlog full: no daemon takes the call. */
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        no_daemon(path, &in);

    struct buf req = {0};
    put(&req, "CNI1", 4);
    for (char **e = environ; *e; e++) {
        if (!strncmp(*e, "CNI_", 4) && strchr(*e, '='))
            put(&req, "", 1), put(&req, *e, strlen(*e));
    }
    put(&req, "\0\0", 2);
    put(&req, in.data, in.len);

    struct buf out = {0};
    int status = 1;
    char why[256];
    if (exchange(sock, &req, &status, &out, why, sizeof why)) {
        /* Never a second attempt in-process: the daemon may have done half the work
         * (and undoes it); the runtime retries on the error Python writes. */
        char *args[] = {FRONT_DAEMON_FAILED, path, why};
        char *failed = NULL;
        if (asprintf(&failed, "the node's CNI daemon (%s) did not answer (%s)", path, why) < 0)
            failed = NULL;
        python(args, 3, &in, failed);
    }
    return write_all(1, out.data, out.len) ? 1 : status;
}
