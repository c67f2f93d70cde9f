#!/usr/bin/env bash
# The CPU a healed split costs with bounded sessions, over containers (see
# BENCHMARKS.md, "Healing a split under bounded sessions"):
#
#   docker/heal-cpu.sh IMAGE      # for example cloister-node:local (docker/build.sh)
#
# 8 containers of IMAGE (`sessions = "bounded"`, `monitors = 1`, 100 ms
# heartbeats, 600 ms timeout) form one ring; iptables rules in their network
# namespaces (nsenter, as root) cut 5|3 for 8 s; the rules are flushed. Prints
# the CPU ticks (1/100 s) all 8 used in the 6 s after the heal and the size of
# each one's last ring. Removes its containers and network on exit.
set -u
IMG=${1:?usage: docker/heal-cpu.sh IMAGE}; P=healcpu$$
. "$(dirname "$0")/eight.sh"
cut_both_ways "1 2 3 4 5" "6 7 8"
sleep 8
ticks() { for i in 1 2 3 4 5 6 7 8; do awk '{print $14+$15}' /proc/$(pid $i)/stat; done | paste -sd+ | bc; }
t0=$(ticks)
heal
sleep 6
t1=$(ticks)
echo "CPU ticks (1/100 s) of all 8 in the 6 s after the heal: $((t1-t0))"
ring_sizes | sed 's/^/ring sizes (count, members): /'
