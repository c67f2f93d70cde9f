#!/usr/bin/env bash
# A partial partition under bounded sessions, over containers: do the rings
# hold still? (see BENCHMARKS.md, "A bridge under bounded sessions"):
#
#   docker/bridge.sh IMAGE      # for example cloister-node:local (docker/build.sh)
#
# 8 containers of IMAGE (`sessions = "bounded"`, `monitors = 1`, 100 ms
# heartbeats, 600 ms timeout) form one ring; iptables rules in their network
# namespaces (nsenter, as root) cut 1,2,3 | 4,5,6,7 both ways for 20 s, node 8
# reaching both sides. Prints the ring changes of all 8 in each 10 s, the
# size of each one's last ring, the lines saying a member is alive but
# unheard, and the ring sizes 5 s after the rules are flushed. Removes its
# containers and network on exit.
set -u
IMG=${1:?usage: docker/bridge.sh IMAGE}; P=bridge$$
. "$(dirname "$0")/eight.sh"
cut_both_ways "1 2 3" "4 5 6 7"
rc() { for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>/dev/null | grep -c '"ring_changed"'; done | paste -sd+ | bc; }
r0=$(rc); sleep 10; r1=$(rc); sleep 10; r2=$(rc)
echo "ring changes, all 8: $((r1-r0)) in the first 10 s of the bridge, $((r2-r1)) in the next 10 s"
ring_sizes | sed 's/^/ring sizes (count, members): /'
echo "unheard lines: $(for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>&1 | grep -c 'came back after this node said it down'; done | paste -sd' ')"
heal
sleep 5
ring_sizes | sed 's/^/after the heal, ring sizes (count, members): /'
