/* maglev_ref.c: plain C reference for the Maglev table build (benchmark baseline).
 *
 * The same algorithm as ebpflb/_maglev_py.py and ext/maglev.pyx: MurmurHash3 x86_32 of each
 * backend name with two fixed seeds gives its permutation (offset, skip); backends take turns in
 * index order (a turn whenever the weight credit reaches the largest weight) and each takes the
 * next empty slot of its permutation until all m slots are full.
 *
 * Usage: maglev_ref M REPS < backends
 *   backends: one line per backend, "WEIGHT NAME" (NAME runs to the end of the line).
 * Prints one line "ns <nanoseconds>" per build (each build hashes, allocates, fills and frees,
 * as a call of maglev_table does), then "table" and the m slot values of the last build.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEED_OFFSET 0xA5A5A5A5u /* must match ebpflb/_maglev_py.py */
#define SEED_SKIP 0x5A5A5A5Au

/* One backend as read from stdin. */
struct backend {
	const unsigned char *name;
	size_t len;
	uint64_t weight;
};

static inline uint32_t rotl32(uint32_t x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static inline uint32_t scramble(uint32_t k)
{
	k *= 0xCC9E2D51u;
	k = rotl32(k, 15);
	return k * 0x1B873593u;
}

static uint32_t murmur3_32(const unsigned char *data, size_t n, uint32_t seed)
{
	uint32_t h = seed, k;
	size_t body = n & ~(size_t)3, i;

	for (i = 0; i < body; i += 4) {
		k = (uint32_t)data[i] | (uint32_t)data[i + 1] << 8 | (uint32_t)data[i + 2] << 16 |
		    (uint32_t)data[i + 3] << 24;
		h ^= scramble(k);
		h = rotl32(h, 13);
		h = h * 5u + 0xE6546B64u;
	}
	k = 0;
	switch (n & 3) {
	case 3:
		k ^= (uint32_t)data[body + 2] << 16; /* fall through */
	case 2:
		k ^= (uint32_t)data[body + 1] << 8; /* fall through */
	case 1:
		k ^= data[body];
		h ^= scramble(k);
	}
	h ^= (uint32_t)n;
	h ^= h >> 16;
	h *= 0x85EBCA6Bu;
	h ^= h >> 13;
	h *= 0xC2B2AE35u;
	h ^= h >> 16;
	return h;
}

/* Build the table into out[m]; returns 0, or -1 when memory runs out. */
static int maglev_build(const struct backend *b, size_t n, uint32_t m, int32_t *out)
{
	size_t i, a, n_active = 0;
	uint64_t max_w = 0;
	uint32_t k, filled = 0;

	for (i = 0; i < n; i++) {
		if (b[i].weight > 0) {
			n_active++;
			if (b[i].weight > max_w)
				max_w = b[i].weight;
		}
	}
	for (k = 0; k < m; k++)
		out[k] = -1;
	if (n_active == 0)
		return 0;

	int32_t *table = malloc(m * sizeof(*table));
	int32_t *idx = malloc(n_active * sizeof(*idx));
	uint32_t *pos = malloc(n_active * sizeof(*pos));
	uint32_t *skip = malloc(n_active * sizeof(*skip));
	uint64_t *credit = malloc(n_active * sizeof(*credit));
	uint64_t *weight = malloc(n_active * sizeof(*weight));
	int rc = -1;

	if (!table || !idx || !pos || !skip || !credit || !weight)
		goto out;
	for (i = 0, a = 0; i < n; i++) {
		if (b[i].weight == 0)
			continue;
		idx[a] = (int32_t)i;
		pos[a] = murmur3_32(b[i].name, b[i].len, SEED_OFFSET) % m;
		skip[a] = murmur3_32(b[i].name, b[i].len, SEED_SKIP) % (m - 1) + 1;
		credit[a] = 0;
		weight[a] = b[i].weight;
		a++;
	}
	for (k = 0; k < m; k++)
		table[k] = -1;
	for (;;) {
		for (a = 0; a < n_active; a++) {
			uint64_t c = credit[a] + weight[a];
			uint32_t p, s;

			if (c < max_w) {
				credit[a] = c;
				continue;
			}
			credit[a] = c - max_w;
			p = pos[a];
			s = skip[a];
			while (table[p] >= 0) {
				p += s;
				if (p >= m)
					p -= m;
			}
			table[p] = idx[a];
			p += s;
			if (p >= m)
				p -= m;
			pos[a] = p;
			if (++filled == m)
				goto done;
		}
	}
done:
	/* The result leaves the builder, as the Python list does. */
	memcpy(out, table, m * sizeof(*table));
	rc = 0;
out:
	free(table);
	free(idx);
	free(pos);
	free(skip);
	free(credit);
	free(weight);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s M REPS < backends\n", argv[0]);
		return 2;
	}
	uint32_t m = (uint32_t)strtoul(argv[1], NULL, 10);
	long reps = strtol(argv[2], NULL, 10);
	size_t n = 0, cap = 16;
	struct backend *b = malloc(cap * sizeof(*b));
	char *line = NULL;
	size_t line_cap = 0;
	ssize_t got;

	if (m < 2 || reps < 1 || !b) {
		fprintf(stderr, "bad M or REPS\n");
		return 2;
	}
	while ((got = getline(&line, &line_cap, stdin)) > 0) {
		char *sp;

		if (line[got - 1] == '\n')
			line[--got] = '\0';
		sp = strchr(line, ' ');
		if (!sp) {
			fprintf(stderr, "bad backend line: %s\n", line);
			return 2;
		}
		if (n == cap) {
			cap *= 2;
			b = realloc(b, cap * sizeof(*b));
			if (!b)
				return 1;
		}
		b[n].weight = strtoull(line, NULL, 10);
		b[n].len = (size_t)(got - (sp + 1 - line));
		b[n].name = (const unsigned char *)strndup(sp + 1, b[n].len);
		n++;
	}

	int32_t *out = malloc(m * sizeof(*out));
	if (!out)
		return 1;
	for (long r = 0; r < reps; r++) {
		struct timespec t0, t1;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		if (maglev_build(b, n, m, out) < 0)
			return 1;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		printf("ns %lld\n", (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL +
					     (t1.tv_nsec - t0.tv_nsec));
	}
	printf("table");
	for (uint32_t k = 0; k < m; k++)
		printf(" %d", out[k]);
	printf("\n");
	return 0;
}
