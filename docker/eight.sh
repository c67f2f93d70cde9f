# Sourced by docker/heal-cpu.sh and docker/bridge.sh: 8 containers of $IMG
# named ${P}_1 .. ${P}_8 on a network of their own (`sessions = "bounded"`,
# `monitors = 1`, 100 ms heartbeats, 600 ms timeout), formed into one ring;
# removed with their network when the script exits. Then `ip N`, `pid N`
# `cut_both_ways "A..." "B..."` and `heal` (iptables in the containers' network
# namespaces, through nsenter: run as root).
NET=${P}_net
docker network create $NET >/dev/null
cleanup() { docker rm -f $(docker ps -aq --filter name=${P}_) >/dev/null 2>&1; docker network rm $NET >/dev/null 2>&1; }
trap cleanup EXIT
for i in 1 2 3 4 5 6 7 8; do
  docker run -d --name ${P}_$i --network $NET --network-alias svc.local \
    -e CLOISTER_COOKIE=eight-test-cookie-0123456789 -e CLOISTER_APP=svc -e CLOISTER_SENTRY=svc.local \
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
cut_both_ways() {
  for a in $1; do for b in $2; do
    nsenter -t $(pid $a) -n iptables -A INPUT -s $(ip $b) -j DROP
    nsenter -t $(pid $b) -n iptables -A INPUT -s $(ip $a) -j DROP
  done; done
}
# The size of each container's last ring, counted: "N containers with M members".
ring_sizes() {
  for i in 1 2 3 4 5 6 7 8; do docker logs ${P}_$i 2>/dev/null | grep '"ring_changed"' | tail -1 | grep -o '"members":\[[^]]*\]' | tr ',' '\n' | wc -l; done | sort | uniq -c
}
# Flushes every rule `cut_both_ways` added.
heal() { for i in 1 2 3 4 5 6 7 8; do nsenter -t $(pid $i) -n iptables -F INPUT; done; }
