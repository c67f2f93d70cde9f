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
NET=${P}_net
docker network create $NET >/dev/null
cleanup() { docker rm -f $(docker ps -aq --filter name=${P}_) >/dev/null 2>&1; docker network rm $NET >/dev/null 2>&1; }
trap cleanup EXIT
for i in 1 2 3 4 5 6 7 8; do
  docker run -d --name ${P}_$i --network $NET --network-alias svc.local \
    -e CLOISTER_COOKIE=storm-test-cookie-0123456789 -e CLOISTER_APP=svc -e CLOISTER_SENTRY=svc.local \
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
A="1 2 3 4 5"; B="6 7 8"
for a in $A; do for b in $B; do
  nsenter -t $(pid $a) -n iptables -A INPUT -s $(ip $b) -j DROP
  nsenter -t $(pid $b) -n iptables -A INPUT -s $(ip $a) -j DROP
done; done
sleep 8
ticks() { for i in 1 2 3 4 5 6 7 8; do awk '{print $14+$15}' /proc/$(pid $i)/stat; done | paste -sd+ | bc; }
t0=$(ticks)
for i in 1 2 3 4 5 6 7 8; do nsenter -t $(pid $i) -n iptables -F INPUT; done
sleep 6
t1=$(ticks)
echo "CPU ticks (1/100 s) of all 8 in the 6 s after the heal: $((t1-t0))"
for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>/dev/null | grep '"ring_changed"' | tail -1 | grep -o '"members":\[[^]]*\]' | tr ',' '\n' | wc -l; done | sort | uniq -c | sed 's/^/ring sizes (count, members): /'
