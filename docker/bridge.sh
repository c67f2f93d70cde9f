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
NET=${P}_net
docker network create $NET >/dev/null
cleanup() { docker rm -f $(docker ps -aq --filter name=${P}_) >/dev/null 2>&1; docker network rm $NET >/dev/null 2>&1; }
trap cleanup EXIT
for i in 1 2 3 4 5 6 7 8; do
  docker run -d --name ${P}_$i --network $NET --network-alias svc.local \
    -e CLOISTER_COOKIE=bridge-test-cookie-0123456789 -e CLOISTER_APP=svc -e CLOISTER_SENTRY=svc.local \
    -e CLOISTER_CONSENSUS=8 -e CLOISTER_SESSIONS=bounded -e CLOISTER_MONITORS=1 \
    -e CLOISTER_HEARTBEAT_INTERVAL=100ms -e CLOISTER_HEARTBEAT_TIMEOUT=600ms $IMG >/dev/null
done
for t in $(seq 1 60); do
  n=$(for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>/dev/null | grep -c '"to":"ready"'; done | paste -sd+ | bc)
  [ "$n" -ge 8 ] && break; sleep 0.5
done
echo "formed: $n of 8 ready"
ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' ${P}_$1; }
pid() { docker inspect -f '{{.State.Pid}}' ${P}_$1; }
A="1 2 3"; B="4 5 6 7"
for a in $A; do for b in $B; do
  nsenter -t $(pid $a) -n iptables -A INPUT -s $(ip $b) -j DROP
  nsenter -t $(pid $b) -n iptables -A INPUT -s $(ip $a) -j DROP
done; done
rc() { for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>/dev/null | grep -c '"ring_changed"'; done | paste -sd+ | bc; }
r0=$(rc); sleep 10; r1=$(rc); sleep 10; r2=$(rc)
echo "ring changes, all 8: $((r1-r0)) in the first 10 s of the bridge, $((r2-r1)) in the next 10 s"
for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>/dev/null | grep '"ring_changed"' | tail -1 | grep -o '"members":\[[^]]*\]' | tr ',' '\n' | wc -l; done | sort | uniq -c | sed 's/^/ring sizes (count, members): /'
echo "unheard lines: $(for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>&1 | grep -c 'came back after this node said it down'; done | paste -sd' ')"
for i in 1 2 3 4 5 6 7 8; do nsenter -t $(pid $i) -n iptables -F INPUT; done
sleep 5
for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>/dev/null | grep '"ring_changed"' | tail -1 | grep -o '"members":\[[^]]*\]' | tr ',' '\n' | wc -l; done | sort | uniq -c | sed 's/^/after the heal, ring sizes (count, members): /'
