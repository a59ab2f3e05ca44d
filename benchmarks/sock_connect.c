/* Client of the per-connect() cost benchmark of the socket hooks (benchmarks/sock_connect.py,
 * which builds this with gcc, starts it in its network namespace and cgroup, and reads its JSON).
 *
 *   sock_connect ROUNDS ITERATIONS HOOKED_CGROUP PLAIN_CGROUP VIP:PORT BACKEND:PORT...
 *
 * One process listens on the backends' port (every address of the namespace: the backends are
 * addresses on its loopback) and times blocking connect()+close() pairs of three kinds:
 *
 *   vip            to the frontend, the socket created in HOOKED_CGROUP: lb4_connect translates it
 *   direct         to a backend (in turn), in HOOKED_CGROUP: the hook runs and finds no frontend
 *   direct_nohook  to a backend, the socket created in PLAIN_CGROUP, where no hook is attached
 *
 * A socket belongs to the cgroup of the process that created it, for good, and the hooks run for
 * the socket's cgroup. So the sockets are made ahead, in batches of BATCH per kind, the process
 * moving to PLAIN_CGROUP for the direct_nohook ones and back (a move takes ~0.2 ms: too slow per
 * sample, nothing per batch), and the three kinds then take turns sample by sample, the order
 * rotated every sample, so drift in machine load hits them alike. The clock runs around
 * connect() and close() only (on loopback the handshake completes inside connect()); the server
 * side is accepted and closed after it stops.
 *
 * Before timing, a check: connect()s to the VIP land on backends (the accepted socket's local
 * address) and getpeername() says the VIP (lb4_getpeername), direct ones are left alone, and a
 * socket of the plain cgroup does not reach the VIP. Output:
 * one JSON object with the check and, per round and kind, the median and mean of connect()+close()
 * and the median of connect() alone, in nanoseconds; "vip_connects" is how many connect()s to the
 * VIP the process made in all, for the caller to compare with the hook's counter.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BACKENDS 16
#define CHECKS 64  /* connect()s to the VIP checked before timing */
#define WARMUP 500  /* samples of each kind before the timed rounds */
#define BATCH 500  /* sockets of each kind made ahead */

enum { VIP, DIRECT, DIRECT_NOHOOK, KINDS };
static const char *KIND_NAMES[KINDS] = {"vip", "direct", "direct_nohook"};

static struct sockaddr_in vip, backends[MAX_BACKENDS];
static int nbackends, next_backend, listener;
static const char *hooked, *plain;  /* the two cgroups (directories) */
static long vip_connects;

static void die(const char *what) { perror(what); exit(2); }

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void parse_addr(const char *text, struct sockaddr_in *out) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (!colon || colon - text >= (long)sizeof host) { fprintf(stderr, "bad address %s\n", text); exit(2); }
    memcpy(host, text, colon - text);
    host[colon - text] = 0;
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons(atoi(colon + 1));
    if (inet_pton(AF_INET, host, &out->sin_addr) != 1) { fprintf(stderr, "bad address %s\n", text); exit(2); }
}

static void join_cgroup(const char *cgroup) {
    char path[4096];
    snprintf(path, sizeof path, "%s/cgroup.procs", cgroup);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1) die(path);
    close(fd);
}

static void listen_on(int port) {
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener < 0) die("socket");
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&any, sizeof any) < 0) die("bind");
    if (listen(listener, 4096) < 0) die("listen");
}

/* The server side of the connection just made: accepted (it is queued already: the handshake
 * completed inside connect()) and closed. Its local address is where the client landed. */
static struct sockaddr_in accept_one(void) {
    struct pollfd p = {.fd = listener, .events = POLLIN};
    struct sockaddr_in local;
    socklen_t len = sizeof local;
    if (poll(&p, 1, 2000) != 1) { fprintf(stderr, "no connection to accept\n"); exit(2); }
    int fd = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) die("accept");
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0) die("getsockname");
    close(fd);
    return local;
}

static const struct sockaddr_in *target(int kind) {
    if (kind == VIP) {
        vip_connects++;
        return &vip;
    }
    next_backend = (next_backend + 1) % nbackends;
    return &backends[next_backend];
}

/* One timed connect()+close() of socket fd; *connect_ns gets the connect() part. */
static uint64_t timed_pair(int fd, int kind, uint64_t *connect_ns) {
    const struct sockaddr_in *to = target(kind);
    uint64_t t0 = now_ns();
    if (connect(fd, (const struct sockaddr *)to, sizeof *to) < 0) die("connect");
    uint64_t t1 = now_ns();
    close(fd);
    uint64_t t2 = now_ns();
    accept_one();
    *connect_ns = t1 - t0;
    return t2 - t0;
}

static int same(const struct sockaddr_in *a, const struct sockaddr_in *b) {
    return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

/* Whether a socket made in the plain cgroup fails to connect to the VIP: nothing translates it
 * there, and the namespace has no route to the Service range. */
static int plain_vip_unreachable(void) {
    join_cgroup(plain);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    join_cgroup(hooked);
    if (fd < 0) die("socket");
    int failed = connect(fd, (const struct sockaddr *)&vip, sizeof vip) < 0;
    close(fd);
    return failed;
}

/* connect()s to the VIP must reach a backend and look like the VIP to the client; a backend
 * connected directly must stay itself; outside the hooked cgroup the VIP is not translated.
 * Prints the "check" member of the output. */
static void check(void) {
    long landed[MAX_BACKENDS] = {0};
    long peer_is_vip = 0, direct_untouched = 0;
    for (int i = 0; i < CHECKS; i++) {
        const struct sockaddr_in *to = target(VIP);
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (const struct sockaddr *)to, sizeof *to) < 0) die("check connect");
        if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0) die("getpeername");
        peer_is_vip += same(&peer, &vip);
        close(fd);
        struct sockaddr_in local = accept_one();
        for (int b = 0; b < nbackends; b++)
            landed[b] += same(&local, &backends[b]);
    }
    for (int b = 0; b < nbackends; b++) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (const struct sockaddr *)&backends[b], sizeof backends[b]) < 0)
            die("check connect");
        if (getpeername(fd, (struct sockaddr *)&peer, &len) < 0) die("getpeername");
        close(fd);
        struct sockaddr_in local = accept_one();
        direct_untouched += same(&peer, &backends[b]) && same(&local, &backends[b]);
    }
    printf("\"check\": {\"vip_connects\": %d, \"peer_is_vip\": %ld, \"direct_untouched\": %ld, "
           "\"direct_connects\": %d, \"plain_vip_unreachable\": %s, \"landed\": {", CHECKS,
           peer_is_vip, direct_untouched, nbackends, plain_vip_unreachable() ? "true" : "false");
    for (int b = 0; b < nbackends; b++)
        printf("%s\"%s\": %ld", b ? ", " : "", inet_ntoa(backends[b].sin_addr), landed[b]);
    printf("}}");
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double median(uint64_t *xs, int n) {
    qsort(xs, n, sizeof *xs, cmp_u64);
    return n % 2 ? (double)xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2.0;
}

static double mean(const uint64_t *xs, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += xs[i];
    return s / n;
}

struct samples { uint64_t *pair, *conn; int n; };

static int fds[KINDS][BATCH];

/* n sockets of each kind, each made in the cgroup its kind needs; the process ends up in the
 * hooked cgroup. */
static void make_sockets(int n) {
    for (int k = KINDS - 1; k >= 0; k--) {  /* DIRECT_NOHOOK first */
        join_cgroup(k == DIRECT_NOHOOK ? plain : hooked);
        for (int i = 0; i < n; i++)
            if ((fds[k][i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) die("socket");
    }
}

/* n samples of each kind, taking turns, into s (NULL: a warm-up); `shift` rotates the order. */
static void run_batch(struct samples *s, int n, int shift) {
    uint64_t conn, pair;
    make_sockets(n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < KINDS; j++) {
            int k = (i + j + shift) % KINDS;
            /* direct_nohook connects to a backend, as direct does, from a plain socket */
            pair = timed_pair(fds[k][i], k == VIP ? VIP : DIRECT, &conn);
            if (s) {
                s[k].pair[s[k].n] = pair;
                s[k].conn[s[k].n] = conn;
                s[k].n++;
            }
        }
}

static void print_round(int round, struct samples *s) {
    printf("%s{\"round\": %d", round ? ", " : "", round);
    for (int k = 0; k < KINDS; k++) {
        double m = mean(s[k].pair, s[k].n);
        printf(", \"%s\": {\"median_ns\": %.1f, \"mean_ns\": %.1f, \"connect_median_ns\": %.1f, \"n\": %d}",
               KIND_NAMES[k], median(s[k].pair, s[k].n), m, median(s[k].conn, s[k].n), s[k].n);
    }
    printf("}");
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: sock_connect ROUNDS ITERATIONS HOOKED_CGROUP PLAIN_CGROUP VIP:PORT BACKEND:PORT...\n");
        return 2;
    }
    int rounds = atoi(argv[1]), iterations = atoi(argv[2]);
    hooked = argv[3];
    plain = argv[4];
    parse_addr(argv[5], &vip);
    nbackends = argc - 6;
    if (rounds < 1 || iterations < 1 || nbackends > MAX_BACKENDS) { fprintf(stderr, "bad arguments\n"); return 2; }
    for (int b = 0; b < nbackends; b++) parse_addr(argv[6 + b], &backends[b]);
    listen_on(ntohs(backends[0].sin_port));
    join_cgroup(hooked);

    printf("{");
    check();
    for (int done = 0; done < WARMUP; done += BATCH)
        run_batch(NULL, WARMUP - done < BATCH ? WARMUP - done : BATCH, 0);

    struct samples s[KINDS];
    for (int k = 0; k < KINDS; k++) {
        s[k].pair = malloc(sizeof(uint64_t) * iterations);
        s[k].conn = malloc(sizeof(uint64_t) * iterations);
        if (!s[k].pair || !s[k].conn) die("malloc");
    }
    printf(", \"rounds\": [");
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < KINDS; k++) s[k].n = 0;
        for (int done = 0; done < iterations; done += BATCH)
            run_batch(s, iterations - done < BATCH ? iterations - done : BATCH, r + done);
        print_round(r, s);
    }
    printf("], \"vip_connects\": %ld}\n", vip_connects);
    return 0;
}
