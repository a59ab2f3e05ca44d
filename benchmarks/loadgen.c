/* Load client and tiny HTTP server for the side-by-side suite (benchmarks/suite/).
 *
 * One thread, epoll, non-blocking sockets, so one process keeps many connections in flight
 * without a thread per connection; the suite reports this process's own CPU share so a
 * saturated client can be told apart from a slow data path.
 *
 *   loadgen server PORT
 *       HTTP/1.1 on PORT, both families: one IPv4 listening socket, and one IPv6 socket with
 *       IPV6_V6ONLY where the namespace has IPv6, so each family is served by a socket of its
 *       own (no IPv4-mapped path: IPv4 figures compare with runs from before IPv6); answers every
 *       request with "ok\n"; keeps the connection unless the request says "Connection: close",
 *       then closes first (TIME_WAIT stays on the server, the client's ports are reusable at once).
 *   loadgen conn SECONDS CONCURRENCY TARGET [TARGET ...]
 *       new connections: connect, one small GET with "Connection: close", read to EOF, close;
 *       the latency of a sample is that whole cycle. Targets are used in turn. A TARGET is
 *       IPv4:PORT (10.96.1.1:80) or [IPv6]:PORT ([fd00:10:96::101]:80), each of its own family.
 *   loadgen keepalive SECONDS CONCURRENCY TARGET [TARGET ...]
 *       CONCURRENCY persistent connections, one request in flight on each; the latency of a
 *       sample is request sent to response complete.
 *
 * A client run prints one JSON object: count, errors, seconds, rate, p50/p90/p99/max in
 * microseconds, and cpu (user+system seconds of this process / wall seconds).
 * Runs are bounded by SECONDS and by MAX_SAMPLES.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES 4000000
#define MAX_CONC 1024
#define MAX_TARGETS 64
#define BUF 4096

static const char RESP[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
static const char RESP_CLOSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
static const char REQ_CLOSE[] = "GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n";
static const char REQ_KEEP[] = "GET / HTTP/1.1\r\nHost: svc\r\n\r\n";

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void die(const char *what) { perror(what); exit(2); }

/* ------------------------------------------------------------------ server */

struct sconn { int fd; int len; char buf[BUF]; };

/* The listening sockets on PORT: IPv4 always (its failure is fatal), IPv6 (V6ONLY) where the
 * namespace has IPv6; without it (an IPv4-only lab pod) the server runs IPv4 alone, as before.
 * Returns how many of ls[] it filled. */
static int listen_both(int port, int ls[2]) {
    int one = 1, n = 0;
    ls[n] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls[n] < 0) die("socket");
    setsockopt(ls[n], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(ls[n], (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(ls[n], 4096) < 0) die("listen");
    n++;
    ls[n] = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (ls[n] < 0) return n;
    setsockopt(ls[n], SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls[n], IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                              .sin6_addr = IN6ADDR_ANY_INIT};
    if (bind(ls[n], (struct sockaddr *)&a6, sizeof a6) < 0 || listen(ls[n], 4096) < 0) {
        close(ls[n]);
        return n;
    }
    return n + 1;
}

/* epoll data of a listening socket: its index into the listeners, tagged apart from the
 * connection pointers (which are never this small). */
#define LISTENER(i) ((void *)(uintptr_t)((i) + 1))
#define IS_LISTENER(p) ((uintptr_t)(p) <= 2)

static int server(int port) {
    signal(SIGPIPE, SIG_IGN);
    int one = 1;
    int ls[2];
    int nls = listen_both(port, ls);
    int ep = epoll_create1(0);
    for (int i = 0; i < nls; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = LISTENER(i)};
        epoll_ctl(ep, EPOLL_CTL_ADD, ls[i], &ev);
    }
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            struct sconn *c = evs[i].data.ptr;
            if (IS_LISTENER(c)) {
                int l = ls[(uintptr_t)c - 1];
                for (;;) {
                    int fd = accept4(l, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            int closeit = 0;
            for (;;) {
                int r = read(c->fd, c->buf + c->len, BUF - 1 - c->len);
                if (r == 0) { closeit = 1; break; }
                if (r < 0) { if (errno != EAGAIN) closeit = 1; break; }
                c->len += r;
                c->buf[c->len] = 0;
                char *end;
                while ((end = strstr(c->buf, "\r\n\r\n"))) {
                    int reqlen = end + 4 - c->buf;
                    int want_close = memmem(c->buf, reqlen, "Connection: close", 17) != NULL;
                    if (want_close) {
                        (void)!write(c->fd, RESP_CLOSE, sizeof RESP_CLOSE - 1);
                        closeit = 1;
                        break;
                    }
                    (void)!write(c->fd, RESP, sizeof RESP - 1);
                    memmove(c->buf, c->buf + reqlen, c->len - reqlen + 1);
                    c->len -= reqlen;
                }
                if (closeit || c->len >= BUF - 1) { closeit = 1; break; }
            }
            if (closeit) {
                close(c->fd);
                free(c);
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ client */

struct target { struct sockaddr_storage addr; socklen_t len; };
struct cconn { int fd; int state; uint64_t t0; int got; char buf[BUF]; };
enum { IDLE, CONNECTING, WAITING };

static struct target targets[MAX_TARGETS];
static int ntargets, next_target;
static uint32_t *samples;  /* microseconds * 10 would overflow less; keep ns/100 */
static long nsamples, errors;
static int ep;
static int keepalive;

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void start_conn(struct cconn *c) {
    struct target *t = &targets[next_target];
    next_target = (next_target + 1) % ntargets;
    c->fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->t0 = now_ns();
    c->got = 0;
    int r = connect(c->fd, (struct sockaddr *)&t->addr, t->len);
    if (r < 0 && errno != EINPROGRESS) {
        errors++;
        close(c->fd);
        c->fd = -1;
        c->state = IDLE;
        return;
    }
    c->state = CONNECTING;
    struct epoll_event e = {.events = EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
}

static void record(uint64_t ns) {
    if (nsamples < MAX_SAMPLES) {
        uint64_t v = ns / 100;  /* 0.1 us units */
        samples[nsamples] = v > 0xffffffffu ? 0xffffffffu : (uint32_t)v;
    }
    nsamples++;
}

static void fail(struct cconn *c) {
    errors++;
    close(c->fd);
    c->fd = -1;
    c->state = IDLE;
}

/* TARGET: "a.b.c.d:port" or "[ipv6]:port" (brackets required: an IPv6 address has colons of
 * its own, so "fd00::1:80" would be ambiguous). Numeric only: the suite passes addresses, and a
 * name lookup must not slip into a measured run. Prints which part is wrong and returns -1. */
static int parse_target(const char *spec, struct target *t) {
    char host[INET6_ADDRSTRLEN];
    const char *hs, *he, *colon;
    int v6 = spec[0] == '[';
    if (v6) {
        hs = spec + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':') {
            fprintf(stderr, "bad target %s: an IPv6 target is [address]:port\n", spec);
            return -1;
        }
        colon = he + 1;
    } else {
        hs = spec;
        colon = he = strrchr(spec, ':');
        if (!colon || memchr(spec, ':', colon - spec)) {
            fprintf(stderr, "bad target %s: expected a.b.c.d:port or [ipv6]:port\n", spec);
            return -1;
        }
    }
    if (he - hs <= 0 || he - hs >= (long)sizeof host) {
        fprintf(stderr, "bad target %s: address missing or too long\n", spec);
        return -1;
    }
    memcpy(host, hs, he - hs);
    host[he - hs] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 1 || port > 65535) {
        fprintf(stderr, "bad target %s: port must be 1-65535\n", spec);
        return -1;
    }
    memset(&t->addr, 0, sizeof t->addr);
    if (v6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&t->addr;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
            fprintf(stderr, "bad target %s: %s is not an IPv6 address\n", spec, host);
            return -1;
        }
        t->len = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&t->addr;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
            fprintf(stderr, "bad target %s: %s is not an IPv4 address\n", spec, host);
            return -1;
        }
        t->len = sizeof *a;
    }
    return 0;
}

static int client(double seconds, int conc, char **addrs, int naddrs) {
    signal(SIGPIPE, SIG_IGN);
    if (conc < 1 || conc > MAX_CONC || naddrs < 1 || naddrs > MAX_TARGETS) {
        fprintf(stderr, "bad concurrency or targets\n");
        return 2;
    }
    for (int i = 0; i < naddrs; i++)
        if (parse_target(addrs[i], &targets[i]) < 0) return 2;
    ntargets = naddrs;
    samples = malloc(sizeof(uint32_t) * MAX_SAMPLES);
    ep = epoll_create1(0);
    static struct cconn conns[MAX_CONC];
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    uint64_t start = now_ns(), deadline = start + (uint64_t)(seconds * 1e9);
    for (int i = 0; i < conc; i++) start_conn(&conns[i]);
    struct epoll_event evs[MAX_CONC];
    const char *req = keepalive ? REQ_KEEP : REQ_CLOSE;
    size_t reqlen = keepalive ? sizeof REQ_KEEP - 1 : sizeof REQ_CLOSE - 1;
    size_t resplen = sizeof RESP - 1;
    uint64_t t = start;
    while (t < deadline) {
        int n = epoll_wait(ep, evs, MAX_CONC, 100);
        t = now_ns();
        for (int i = 0; i < n; i++) {
            struct cconn *c = evs[i].data.ptr;
            if (c->state == CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err || (evs[i].events & (EPOLLERR | EPOLLHUP))) { fail(c); continue; }
                if (write(c->fd, req, reqlen) != (ssize_t)reqlen) { fail(c); continue; }
                c->state = WAITING;
                c->t0 = keepalive ? now_ns() : c->t0;
                struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
            } else if (c->state == WAITING) {
                for (;;) {
                    int r = read(c->fd, c->buf, BUF);
                    if (r > 0) { c->got += r; continue; }
                    if (r < 0 && errno == EAGAIN) break;
                    /* EOF or error */
                    if (!keepalive && c->got > 0) {
                        record(now_ns() - c->t0);
                        close(c->fd);
                        c->fd = -1;
                        c->state = IDLE;
                    } else {
                        fail(c);
                    }
                    break;
                }
                if (keepalive && c->state == WAITING && c->got >= (int)resplen) {
                    uint64_t tn = now_ns();
                    record(tn - c->t0);
                    c->got -= resplen;
                    c->t0 = tn;
                    if (write(c->fd, req, reqlen) != (ssize_t)reqlen) fail(c);
                }
            }
        }
        if (t < deadline)
            for (int i = 0; i < conc; i++)
                if (conns[i].state == IDLE) start_conn(&conns[i]);  /* next cycle, or reconnect */
    }
    uint64_t end = now_ns();
    getrusage(RUSAGE_SELF, &r1);
    double wall = (end - start) / 1e9;
    double cpu = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6 +
                 (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
    long n = nsamples < MAX_SAMPLES ? nsamples : MAX_SAMPLES;
    qsort(samples, n, sizeof(uint32_t), cmp_u32);
#define PCT(p) (n ? samples[(long)((n - 1) * (p))] / 10.0 : 0.0)
    printf("{\"count\": %ld, \"errors\": %ld, \"seconds\": %.4f, \"rate\": %.1f, "
           "\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f, \"cpu\": %.3f}\n",
           nsamples, errors, wall, nsamples / wall, PCT(0.5), PCT(0.9), PCT(0.99), PCT(1.0), cpu / wall);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "server")) return server(atoi(argv[2]));
    if (argc >= 5 && (!strcmp(argv[1], "conn") || !strcmp(argv[1], "keepalive"))) {
        keepalive = !strcmp(argv[1], "keepalive");
        return client(atof(argv[2]), atoi(argv[3]), argv + 4, argc - 4);
    }
    fprintf(stderr, "usage: loadgen server PORT | loadgen conn|keepalive SECONDS CONCURRENCY TARGET...\n"
                    "  TARGET: a.b.c.d:port or [ipv6]:port\n");
    return 2;
}
