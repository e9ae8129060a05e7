#!/usr/bin/env bash
# What one durable commit costs this machine's disk, apart from the node: a small C program
# writes 30 KiB (about one commit's SQLite WAL frames) into a preallocated file and syncs it,
# 2,000 times, back to back and with an idle gap before each write (as between the requests of
# one sequential client), with fsync and with fdatasync. On a virtual machine the gap is what
# costs: a vCPU that went idle waits for the host to wake it when the sync completes.
#
#   scripts/sync-latency.sh [DIR] [GAP_US]     (defaults: a temporary directory on /tmp, 300 µs)
set -euo pipefail
DIR=${1:-$(mktemp -d)}
GAP=${2:-300}
SRC=$(mktemp --suffix=.c)
BIN=$(mktemp)
trap 'rm -f "$SRC" "$BIN" "$DIR/sync-latency.dat"' EXIT
cat >"$SRC" <<'C'
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#define N 2000
static double ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }
int main(int argc, char **argv) {
  const char *path = argv[1];
  int data_only = atoi(argv[2]), gap = atoi(argv[3]);
  int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0600);
  if (fd < 0) { perror("open"); return 1; }
  static char mib[1 << 20], buf[30 * 1024];
  for (int i = 0; i < 64; i++) if (write(fd, mib, sizeof mib) != sizeof mib) { perror("write"); return 1; }
  fsync(fd);
  memset(buf, 7, sizeof buf);
  static double lat[N];
  double start = ms();
  for (int i = 0; i < N; i++) {
    if (gap) usleep(gap);
    double t = ms();
    if (pwrite(fd, buf, sizeof buf, (off_t)i * sizeof buf) != sizeof buf) { perror("pwrite"); return 1; }
    if (data_only) fdatasync(fd); else fsync(fd);
    lat[i] = ms() - t;
  }
  double total = ms() - start;
  qsort(lat, N, sizeof lat[0], cmp);
  printf("%-9s gap %4d us: write+sync p50 %.3f ms, p99 %.3f ms (%.0f/s)\n", data_only ? "fdatasync" : "fsync", gap,
         lat[N / 2], lat[N * 99 / 100], N / (total / 1e3));
  close(fd);
  return 0;
}
C
cc -O2 -o "$BIN" "$SRC"
for sync in 0 1; do
  for g in 0 "$GAP"; do
    "$BIN" "$DIR/sync-latency.dat" "$sync" "$g"
  done
done
